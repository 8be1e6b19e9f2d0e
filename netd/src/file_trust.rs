//! Trust checks for the runtime files netd reads back (the subnet file of a previous run, a
//! network config given as `@FILE`) and the directory it writes the subnet file into. Another
//! user able to write them could steer netd's subnet, or the CNI plugin's routes, so netd
//! refuses: world-writable files, files owned by another user (not root, not netd's user),
//! symlinks owned by another user, and directories anyone may replace entries in
//! (world-writable without the sticky bit, or owned by another user).
//!
//! The CNI plugin applies the same rules to what it reads (its own copy: it shares no code
//! with netd by design).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use crate::error::{Error, Result};

fn trusted_owner(uid: u32) -> bool {
    uid == 0 || uid == nix::unistd::geteuid().as_raw()
}

fn untrusted(path: &Path, reason: String) -> Error {
    Error::Untrusted {
        path: path.display().to_string(),
        reason,
    }
}

/// A symlink at `path` must belong to root or netd's user.
fn check_link(path: &Path, link: &std::fs::Metadata) -> Result<()> {
    if link.file_type().is_symlink() && !trusted_owner(link.uid()) {
        return Err(untrusted(
            path,
            format!(
                "is a symlink owned by uid {}; refusing to follow it",
                link.uid()
            ),
        ));
    }
    Ok(())
}

/// Checks a file netd is about to read; `Ok(false)` when it does not exist.
pub fn check_file(path: &Path) -> Result<bool> {
    let link = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(Error::file(path, e)),
    };
    check_link(path, &link)?;
    let meta = std::fs::metadata(path).map_err(|e| Error::file(path, e))?;
    if !meta.is_file() {
        return Err(untrusted(path, "is not a regular file".into()));
    }
    let mode = meta.permissions().mode();
    if mode & 0o002 != 0 {
        return Err(untrusted(
            path,
            format!("is world-writable (mode {:o}); chmod o-w it", mode & 0o7777),
        ));
    }
    if !trusted_owner(meta.uid()) {
        return Err(untrusted(
            path,
            format!("is owned by uid {}, not root or netd's user", meta.uid()),
        ));
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        check_dir(dir)?;
    }
    Ok(true)
}

/// Checks a directory netd reads from or writes into: nobody else may replace its entries.
pub fn check_dir(dir: &Path) -> Result<()> {
    let link = std::fs::symlink_metadata(dir).map_err(|e| Error::file(dir, e))?;
    check_link(dir, &link)?;
    let meta = std::fs::metadata(dir).map_err(|e| Error::file(dir, e))?;
    let mode = meta.permissions().mode();
    if mode & 0o002 != 0 && mode & 0o1000 == 0 {
        return Err(untrusted(
            dir,
            format!(
                "is a world-writable directory without the sticky bit (mode {:o}): anyone could replace files in it",
                mode & 0o7777
            ),
        ));
    }
    if !trusted_owner(meta.uid()) {
        return Err(untrusted(
            dir,
            format!(
                "is a directory owned by uid {}, not root or netd's user",
                meta.uid()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }

    #[test]
    fn refuses_what_others_can_write() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        chmod(dir, 0o755);
        let f = dir.join("subnet.env");
        assert!(!check_file(&f).expect("missing is fine"));
        std::fs::write(&f, "FLANNEL_SUBNET=10.244.1.1/24\n").expect("write");
        chmod(&f, 0o644);
        assert!(check_file(&f).expect("own file"));

        chmod(&f, 0o666);
        let e = check_file(&f).expect_err("world-writable").to_string();
        assert!(
            e.contains("world-writable") && e.contains("subnet.env"),
            "{e}"
        );
        chmod(&f, 0o644);

        chmod(dir, 0o777);
        let e = check_file(&f).expect_err("open dir").to_string();
        assert!(e.contains("sticky"), "{e}");
        chmod(dir, 0o1777);
        assert!(check_file(&f).expect("sticky dir, own file"));
        chmod(dir, 0o755);

        // A symlink we own to our own file is fine.
        let link = dir.join("link.env");
        symlink(&f, &link).expect("symlink");
        assert!(check_file(&link).expect("own symlink"));

        // Ownership by another user: tests/file_trust.rs (needs root to arrange).
    }
}
