//! Trust checks for what the plugin reads as root: the subnet file netd writes and the IPAM
//! store directory. Another user able to write them could choose the addresses and routes the
//! plugin programs, or plant symlinks the plugin would write through. Refused: world-writable
//! files, files owned by another user (not root, not the plugin's user), symlinks owned by
//! another user, and directories anyone may replace entries in (world-writable without the
//! sticky bit, or owned by another user). netd applies the same rules to its side.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use crate::error::{CniError, Result};

fn trusted_owner(uid: u32) -> bool {
    uid == 0 || uid == nix::unistd::geteuid().as_raw()
}

fn untrusted(path: &Path, reason: String) -> CniError {
    CniError::Untrusted {
        path: path.display().to_string(),
        reason,
    }
}

/// A symlink at `path` must belong to root or the plugin's user.
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

/// Checks a file before reading it; `Ok(false)` when it does not exist.
pub fn check_file(path: &Path) -> Result<bool> {
    let link = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(CniError::io(format!("stat {}", path.display()), e)),
    };
    check_link(path, &link)?;
    let meta =
        std::fs::metadata(path).map_err(|e| CniError::io(format!("stat {}", path.display()), e))?;
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
            format!("is owned by uid {}, not root", meta.uid()),
        ));
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        check_dir(dir)?;
    }
    Ok(true)
}

/// Checks a directory the plugin reads from or writes into: nobody else may replace entries.
pub fn check_dir(dir: &Path) -> Result<()> {
    let stat_err = |e| CniError::io(format!("stat {}", dir.display()), e);
    let link = std::fs::symlink_metadata(dir).map_err(stat_err)?;
    check_link(dir, &link)?;
    let meta = std::fs::metadata(dir).map_err(stat_err)?;
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
            format!("is a directory owned by uid {}, not root", meta.uid()),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }

    #[test]
    fn modes_others_could_write_are_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        chmod(dir, 0o755);
        let f = dir.join("subnet.env");
        assert!(!check_file(&f).expect("missing"));
        std::fs::write(&f, "x").expect("write");
        chmod(&f, 0o644);
        assert!(check_file(&f).expect("fine"));
        chmod(&f, 0o646);
        assert!(
            check_file(&f)
                .expect_err("o+w")
                .to_string()
                .contains("world-writable")
        );
        chmod(&f, 0o644);
        chmod(dir, 0o777);
        assert!(
            check_dir(dir)
                .expect_err("open dir")
                .to_string()
                .contains("sticky")
        );
        chmod(dir, 0o1777);
        assert!(check_file(&f).expect("sticky dir"));
        chmod(dir, 0o755);
    }
}
