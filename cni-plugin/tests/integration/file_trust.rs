//! The plugin refuses, with CNI error 106 naming the culprit, a subnet file or IPAM store
//! that another user could have written: a world-writable subnet file, one owned by another
//! user, a subnet file reached through a symlink another user owns, and a world-writable data
//! directory without the sticky bit. A refused ADD leaves no allocation behind. Giving files
//! to another user needs root, which every test here needs anyway (namespaces).

use crate::common;

use std::os::unix::fs::{PermissionsExt, lchown, symlink};
use std::path::Path;

use common::World;
use serde_json::json;

const NOBODY: u32 = 65534;
const UNTRUSTED_FILE: u64 = 106;

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// ADD must fail with 106, naming `culprit` and `reason`.
fn add_refused(w: &mut World, conf: &serde_json::Value, culprit: &Path, reason: &str) {
    let c = w.container("c");
    let reply = w.run("ADD", "cid-trust", &c, conf);
    let err = reply.err(UNTRUSTED_FILE);
    let msg = err["msg"].as_str().unwrap_or_default();
    assert!(
        msg.contains(&format!("refusing {}: it", culprit.display())) && msg.contains(reason),
        "expected {reason:?} about {}: {msg}",
        culprit.display()
    );
    assert!(w.allocations().is_empty(), "{:?}", w.allocations());
    w.remove_container(&c);
}

#[test]
fn subnet_files_and_stores_others_could_write_are_refused() {
    let mut w = World::new("trust");
    let conf = w.conf("1.0.0", json!({}));
    let subnet = w.subnet_file();

    chmod(&subnet, 0o666);
    add_refused(&mut w, &conf, &subnet, "world-writable");
    chmod(&subnet, 0o644);

    std::os::unix::fs::chown(&subnet, Some(NOBODY), None).expect("chown");
    add_refused(&mut w, &conf, &subnet, "owned by uid 65534");
    std::os::unix::fs::chown(&subnet, Some(0), None).expect("chown back");

    let link = w.tmp.path().join("link.env");
    symlink(&subnet, &link).expect("symlink");
    lchown(&link, Some(NOBODY), None).expect("chown symlink");
    let via_link = w.conf("1.0.0", json!({ "subnetFile": link }));
    add_refused(&mut w, &via_link, &link, "symlink owned by uid 65534");

    let data = w.data_dir();
    std::fs::create_dir_all(&data).expect("mkdir");
    chmod(&data, 0o777);
    add_refused(&mut w, &conf, &data, "without the sticky bit");
    chmod(&data, 0o755);

    // With everything in order, ADD works.
    let c = w.container("ok");
    w.run("ADD", "cid-ok", &c, &conf).ok();
    w.run("DEL", "cid-ok", &c, &conf).ok();
}
