//! The conflists shipped in `examples/cni/` run as a runtime runs them: each plugin in order
//! on ADD with the previous result and injected `cniVersion`/`name`/`runtimeConfig`, DEL in
//! reverse with the final result. Paths are redirected into the test's temp dir.

use crate::common;

use std::path::PathBuf;

use common::{CniEnv, World, result_ip};
use serde_json::{Value, json};

fn conflists() -> Vec<(String, Value)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/cni");
    let mut out = Vec::new();
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if name.ends_with(".conflist") {
            let text = std::fs::read_to_string(entry.path()).expect("read conflist");
            let value: Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            out.push((name, value));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(
        out.len() >= 2,
        "expected the standalone and portmap conflists"
    );
    out
}

/// Build plugin `p`'s stdin the way libcni does.
fn plugin_conf(w: &World, list: &Value, p: &Value, prev: Option<&Value>, port: u32) -> Value {
    let mut conf = p.clone();
    conf["cniVersion"] = list["cniVersion"].clone();
    conf["name"] = list["name"].clone();
    if let Some(obj) = conf.as_object_mut() {
        obj.remove("capabilities");
    }
    if p["capabilities"]["portMappings"] == true {
        conf["runtimeConfig"] =
            json!({"portMappings": [{"hostPort": port, "containerPort": 80, "protocol": "tcp"}]});
    }
    if p["type"] == "netd-cni" {
        conf["subnetFile"] = json!(w.subnet_file());
        conf["dataDir"] = json!(w.data_dir());
        if conf["ipam"].is_object() {
            conf["ipam"]["dataDir"] = json!(w.tmp.path().join("ipam"));
        }
    }
    if let Some(prev) = prev {
        conf["prevResult"] = prev.clone();
    }
    conf
}

fn binary(p: &Value) -> String {
    match p["type"].as_str() {
        Some("netd-cni") => common::PLUGIN.to_string(),
        Some(other) => format!("{}/{other}", common::REF_PLUGINS),
        None => panic!("plugin without type"),
    }
}

#[test]
fn shipped_conflists_work_as_a_runtime_runs_them() {
    for (file, list) in conflists() {
        assert_eq!(
            list["cniVersion"], "1.0.0",
            "{file}: ship 1.0.0 for Debian 12 runtimes"
        );
        let plugins = list["plugins"].as_array().expect("plugins");
        assert_eq!(plugins[0]["type"], "netd-cni", "{file}");
        for p in plugins {
            let bin = binary(p);
            common::require_prereqs(&[bin.as_str()]);
        }
        let mut w = World::new("conf");
        let c = w.container("c");
        let port = 30000 + (std::process::id() % 20000);
        let mut result: Option<Value> = None;
        for p in plugins {
            let conf = plugin_conf(&w, &list, p, result.as_ref(), port);
            let env = CniEnv::new("ADD", "conflist", &c, "eth0");
            let reply = common::exec_plugin(&w.host, &binary(p), &env, conf.to_string().as_bytes());
            result = Some(reply.ok().clone());
        }
        let final_result = result.expect("a result");
        let ip = result_ip(&final_result);
        assert!(w.ping(None, &ip), "{file}: container unreachable");
        // CHECK ours only: Debian's portmap 1.1.1 fails its own CHECK on a host without an
        // IPv6 DNAT chain ("could not check ipv6 dnat"), whatever precedes it.
        for p in plugins.iter().filter(|p| p["type"] == "netd-cni") {
            let conf = plugin_conf(&w, &list, p, Some(&final_result), port);
            let env = CniEnv::new("CHECK", "conflist", &c, "eth0");
            common::exec_plugin(&w.host, &binary(p), &env, conf.to_string().as_bytes()).ok();
        }
        for p in plugins.iter().rev() {
            let conf = plugin_conf(&w, &list, p, Some(&final_result), port);
            let env = CniEnv::new("DEL", "conflist", &c, "eth0");
            common::exec_plugin(&w.host, &binary(p), &env, conf.to_string().as_bytes()).ok();
        }
        assert!(w.allocations().is_empty(), "{file}");
        w.assert_detached(&c, "eth0");
    }
}
