//! Trust checks for the runtime files netd and netd-cni read as root (the subnet file, a
//! network config given as `@FILE`, the IPAM store) and the directories they write into.
//! Another user able to write them could steer the subnet, the addresses and the routes these
//! programs set up, or plant symlinks they would write through. Refused: anything at a file's
//! path that is not a regular file, world-writable files, files owned by another user (not root,
//! not the user this process runs as), symlinks owned by another user, and directories anyone
//! may replace entries in (world-writable without the sticky bit, or owned by another user).

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

fn io(path: &Path, source: std::io::Error) -> Error {
    Error::io("stat", path, source)
}

/// A symlink at `path` must belong to root or this process's user.
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

/// Checks a file before reading it, and the directory holding it; `Ok(false)` when it does not
/// exist.
pub fn check_file(path: &Path) -> Result<bool> {
    let link = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io(path, e)),
    };
    check_link(path, &link)?;
    let meta = std::fs::metadata(path).map_err(|e| io(path, e))?;
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
            format!(
                "is owned by uid {}, not root or the user this runs as",
                meta.uid()
            ),
        ));
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        check_dir(dir)?;
    }
    Ok(true)
}

/// Checks a directory read from or written into: nobody else may replace its entries.
pub fn check_dir(dir: &Path) -> Result<()> {
    let link = std::fs::symlink_metadata(dir).map_err(|e| io(dir, e))?;
    check_link(dir, &link)?;
    let meta = std::fs::metadata(dir).map_err(|e| io(dir, e))?;
    if !meta.is_dir() {
        return Err(untrusted(dir, "is not a directory".into()));
    }
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
                "is a directory owned by uid {}, not root or the user this runs as",
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

    fn refusal(r: Result<bool>) -> String {
        match r {
            Err(e @ Error::Untrusted { .. }) => e.to_string(),
            other => panic!("expected a refusal, got {other:?}"),
        }
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

        chmod(&f, 0o646);
        let e = refusal(check_file(&f));
        assert!(
            e.contains("world-writable") && e.contains("subnet.env"),
            "{e}"
        );
        chmod(&f, 0o644);

        chmod(dir, 0o777);
        assert!(refusal(check_file(&f)).contains("sticky"));
        assert!(check_dir(dir).is_err());
        chmod(dir, 0o1777);
        assert!(check_file(&f).expect("sticky dir, own file"));
        chmod(dir, 0o755);

        // A symlink we own to our own file is fine.
        let link = dir.join("link.env");
        symlink(&f, &link).expect("symlink");
        assert!(check_file(&link).expect("own symlink"));

        // Ownership by another user: the netd and netd-cni file_trust tests (need root).
    }

    #[test]
    fn only_regular_files_and_directories() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        chmod(dir, 0o755);
        let sub = dir.join("subnet.env");
        std::fs::create_dir(&sub).expect("mkdir");
        chmod(&sub, 0o755);
        assert!(refusal(check_file(&sub)).contains("not a regular file"));
        let f = dir.join("file");
        std::fs::write(&f, "x").expect("write");
        chmod(&f, 0o644);
        assert!(matches!(check_dir(&f), Err(Error::Untrusted { .. })));
        let fifo = dir.join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644))
            .expect("mkfifo");
        assert!(refusal(check_file(&fifo)).contains("not a regular file"));
    }
}
