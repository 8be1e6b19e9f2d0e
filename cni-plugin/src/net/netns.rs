//! Network namespaces: opening a netns by path and getting a netlink handle bound to it.
//!
//! A netlink socket belongs to the netns it was created in. To talk to a container's netns we
//! create the socket on a throwaway OS thread that has joined that netns; the plugin's own
//! threads never change namespace.

use std::fs::File;
use std::os::fd::AsFd;

use nix::sched::{CloneFlags, setns};
use rtnetlink::Handle;

use crate::error::{CniError, Result};

/// An open network namespace (any path: `/run/netns/x`, `/proc/<pid>/ns/net`, …).
pub struct Netns {
    pub path: String,
    pub file: File,
}

impl Netns {
    /// Open `path`; `Ok(None)` when it no longer exists (a gone netns).
    pub fn open(path: &str) -> Result<Option<Netns>> {
        match File::open(path) {
            Ok(file) => Ok(Some(Netns {
                path: path.to_string(),
                file,
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(CniError::io(format!("open netns {path}"), e)),
        }
    }

    /// Open `path`, failing when it is absent (ADD and CHECK need the netns).
    pub fn open_required(path: &str) -> Result<Netns> {
        Netns::open(path)?.ok_or_else(|| CniError::BadEnv {
            var: "CNI_NETNS",
            reason: format!("netns {path} does not exist"),
        })
    }

    /// A netlink handle inside this netns. Must be called within the tokio runtime.
    pub fn connect(&self) -> Result<Handle> {
        let fd = self
            .file
            .try_clone()
            .map_err(|e| CniError::io(format!("dup netns fd {}", self.path), e))?;
        let rt = tokio::runtime::Handle::current();
        let path = self.path.clone();
        let joined = std::thread::spawn(move || {
            let _guard = rt.enter();
            setns(fd.as_fd(), CloneFlags::CLONE_NEWNET)
                .map_err(|e| CniError::kernel(format!("enter netns {path}"), e))?;
            rtnetlink::new_connection()
                .map_err(|e| CniError::io(format!("netlink socket in {path}"), e))
        })
        .join()
        .map_err(|_| CniError::kernel("netns thread", "panicked"))?;
        let (conn, handle, _) = joined?;
        tokio::spawn(conn);
        Ok(handle)
    }
}

impl Netns {
    /// Writes `value` to the sysctl file `path` (under `/proc/sys/net/`) of this netns, from a
    /// throwaway thread that has joined it: network sysctls resolve to the writer's netns.
    pub fn write_sysctl(&self, path: &str, value: &str) -> Result<()> {
        let fd = self
            .file
            .try_clone()
            .map_err(|e| CniError::io(format!("dup netns fd {}", self.path), e))?;
        let (ns, path, value) = (self.path.clone(), path.to_string(), value.to_string());
        std::thread::spawn(move || {
            setns(fd.as_fd(), CloneFlags::CLONE_NEWNET)
                .map_err(|e| CniError::kernel(format!("enter netns {ns}"), e))?;
            std::fs::write(&path, &value)
                .map_err(|e| CniError::io(format!("write {path} in {ns}"), e))
        })
        .join()
        .map_err(|_| CniError::kernel("netns thread", "panicked"))?
    }
}

/// A netlink handle in the plugin's own (host) netns.
pub fn connect_host() -> Result<Handle> {
    let (conn, handle, _) =
        rtnetlink::new_connection().map_err(|e| CniError::io("netlink socket", e))?;
    tokio::spawn(conn);
    Ok(handle)
}
