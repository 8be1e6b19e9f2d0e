//! VERSION as podman calls it, every error code path, and hostile input: each gets a clear CNI
//! error on stdout with a non-zero exit, and nothing is written anywhere.

use crate::common;

use common::{CniEnv, World};
use serde_json::json;

/// Nothing on disk, no links but `lo`, no firewall table.
fn assert_untouched(w: &World) {
    assert!(!w.data_dir().exists(), "data dir was created");
    assert_eq!(w.host_links(), vec!["lo".to_string()]);
    assert!(!w.nft_ruleset().contains("netd_cni"));
}

#[test]
fn version_with_podman_dummy_environment() {
    let w = World::new("ver");
    let env = CniEnv {
        command: Some("VERSION".into()),
        container_id: Some(String::new()),
        netns: Some("dummy".into()),
        ifname: Some("dummy".into()),
        args: None,
        path: Some("dummy".into()),
    };
    for v in ["0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
        let reply = w.plugin(&env, &json!({"cniVersion": v}));
        let out = reply.ok();
        assert_eq!(out["cniVersion"], v);
        assert_eq!(
            out["supportedVersions"],
            json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
        );
    }
    // No stdin at all.
    let reply = common::exec_plugin(&w.host, common::PLUGIN, &env, b"");
    assert_eq!(reply.ok()["cniVersion"], "1.1.0");
    assert_untouched(&w);
}

#[test]
fn environment_errors_are_code_4() {
    let mut w = World::new("env");
    let c = w.container("c");
    let conf = w.conf("1.0.0", json!({}));
    let full = CniEnv::new("ADD", "cid", &c, "eth0");
    let mut cases = Vec::new();
    let mut e = full.clone();
    e.command = None;
    cases.push(e);
    let mut e = full.clone();
    e.command = Some("FROB".into());
    cases.push(e);
    let mut e = full.clone();
    e.container_id = None;
    cases.push(e);
    let mut e = full.clone();
    e.netns = None;
    cases.push(e);
    let mut e = full.clone();
    e.ifname = None;
    cases.push(e);
    let mut e = full.clone();
    e.netns = Some("/run/netns/does-not-exist-netd-cni".into());
    cases.push(e);
    // Names that would escape the data directory or are not interface names.
    for cid in ["../../etc/passwd", "../x", "a/b", ".hidden", "a b"] {
        let mut e = full.clone();
        e.container_id = Some(cid.into());
        cases.push(e);
    }
    for ifname in ["../x", "..", "a/b", "eth0:1", "waytoolonginterfacename"] {
        let mut e = full.clone();
        e.ifname = Some(ifname.into());
        cases.push(e);
    }
    for (i, env) in cases.iter().enumerate() {
        let reply = w.plugin(env, &conf);
        let err = reply.err(4);
        assert_eq!(err["cniVersion"], "1.0.0", "case {i}");
        // Same for DEL (except the netns rules, which DEL relaxes).
        let mut del = env.clone();
        if del.command.as_deref() == Some("ADD") && del.netns == full.netns {
            del.command = Some("DEL".into());
            w.plugin(&del, &conf).err(4);
        }
    }
    assert_untouched(&w);
}

#[test]
fn config_errors_have_their_codes() {
    let mut w = World::new("conf");
    let c = w.container("c");
    let env = CniEnv::new("ADD", "cid", &c, "eth0");
    let raw = |text: &str| common::exec_plugin(&w.host, common::PLUGIN, &env, text.as_bytes());
    raw("{not json").err(6);
    raw("").err(6);
    raw(r#"{"cniVersion":"1.0.0","name":"n","mtu":"big"}"#).err(6);
    let v = raw(r#"{"cniVersion":"0.1.0","name":"n","type":"netd-cni"}"#);
    v.err(1);
    raw(r#"{"cniVersion":"2.0.0","name":"n","type":"netd-cni"}"#).err(1);
    w.plugin(&env, &w.conf("1.0.0", json!({"name": "../../tmp/x"})))
        .err(7);
    w.plugin(&env, &w.conf("1.0.0", json!({"dataDir": "relative/dir"})))
        .err(7);
    w.plugin(
        &env,
        &w.conf("1.0.0", json!({"ipam": {"type": "../../bin/sh"}})),
    )
    .err(7);
    w.plugin(
        &env,
        &w.conf("1.0.0", json!({"ipam": {"type": "no-such-ipam"}})),
    )
    .err(7);
    w.plugin(&env, &w.conf("1.0.0", json!({"bridge": "bad/name"})))
        .err(7);
    // Commands the config's version does not have.
    let check = CniEnv::new("CHECK", "cid", &c, "eth0");
    w.plugin(&check, &w.conf("0.3.1", json!({}))).err(1);
    let gc = CniEnv::new("GC", "", "", "");
    w.plugin(&gc, &w.conf("1.0.0", json!({}))).err(1);
    let status = CniEnv::new("STATUS", "", "", "");
    w.plugin(&status, &w.conf("0.4.0", json!({}))).err(1);
    assert_untouched(&w);
}

#[test]
fn subnet_file_missing_or_garbage() {
    let mut w = World::new("subn");
    let c = w.container("c");
    let env = CniEnv::new("ADD", "cid", &c, "eth0");
    let status = CniEnv::new("STATUS", "", "", "");
    let conf = w.conf("1.1.0", json!({}));

    // Ready: STATUS succeeds silently.
    let ready = w.plugin(&status, &conf);
    assert_eq!(ready.status, 0, "{}", ready.stdout);
    assert!(ready.stdout.trim().is_empty());

    std::fs::remove_file(w.subnet_file()).expect("remove subnet file");
    let add = w.plugin(&env, &conf);
    let err = add.err(11);
    assert!(
        err["msg"]
            .as_str()
            .is_some_and(|m| m.contains("subnet.env"))
    );
    w.plugin(&status, &conf).err(50);
    // DEL needs no subnet file.
    let mut del = env.clone();
    del.command = Some("DEL".into());
    w.plugin(&del, &w.conf("1.1.0", json!({"ipMasq": false})))
        .ok();

    for garbage in [
        "\u{0}\u{1}binary",
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=not-a-cidr\nFLANNEL_MTU=1450\n",
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=99999999\n",
        "FLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1450\n",
    ] {
        std::fs::write(w.subnet_file(), garbage).expect("write garbage");
        let reply = w.plugin(&env, &conf);
        let err = reply.err(7);
        assert!(err["msg"].as_str().is_some_and(|m| m.contains("invalid")));
        w.plugin(&status, &conf).err(50);
    }
    assert_untouched(&w);
}
