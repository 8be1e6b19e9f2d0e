//! netd refuses, at start-up and before touching the KV store or the kernel, a subnet file that
//! another user could have written: world-writable, owned by another user, reached through a
//! symlink owned by another user, or in a world-writable directory without the sticky bit.
//! Ownership by another user needs root to arrange, so this test requires root.

use crate::common;

use std::os::unix::fs::{PermissionsExt, lchown, symlink};
use std::path::Path;

const NOBODY: u32 = 65534;

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Runs the daemon with `subnet_file`; it must exit non-zero naming `culprit` and `reason`.
fn refused(subnet_file: &Path, culprit: &Path, reason: &str) {
    let f = subnet_file.display().to_string();
    // Port 9 (discard): nothing listens; the check must come before any connection attempt.
    let out = common::netd_cli(&[
        "--etcd-endpoints",
        "http://127.0.0.1:9",
        "--subnet-file",
        &f,
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "netd accepted {f}: {err}");
    assert!(
        err.contains(&format!("refusing {}: it", culprit.display())) && err.contains(reason),
        "{f}: expected {reason:?} in: {err}"
    );
}

#[test]
fn subnet_files_others_could_write_are_refused() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (it gives files to another user)"
    );
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("run");
    std::fs::create_dir(&dir).expect("mkdir");
    chmod(&dir, 0o755);
    let file = dir.join("subnet.env");
    std::fs::write(
        &file,
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\n",
    )
    .expect("write");

    chmod(&file, 0o666);
    refused(&file, &file, "world-writable");
    chmod(&file, 0o644);

    chmod(&dir, 0o777);
    refused(&file, &dir, "without the sticky bit");
    chmod(&dir, 0o755);

    let link = dir.join("link.env");
    symlink(&file, &link).expect("symlink");
    lchown(&link, Some(NOBODY), None).expect("chown symlink");
    refused(&link, &link, "symlink owned by uid 65534");

    std::os::unix::fs::chown(&file, Some(NOBODY), None).expect("chown file");
    refused(&file, &file, "owned by uid 65534");
}
