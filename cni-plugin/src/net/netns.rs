//! Network namespaces for the plugin: opening the container's (or any) netns by path, and a
//! netlink handle bound to one. Entering is [`hostnet::netns`]'s job: a netlink socket belongs
//! to the netns it was created in, so it is made on a thread that has joined that netns; the
//! plugin's own threads never change namespace.

use rtnetlink::Handle;

use crate::error::{CniError, Result};

/// An open network namespace (any path: `/run/netns/x`, `/proc/<pid>/ns/net`, …).
pub struct Netns {
    pub path: String,
    ns: hostnet::netns::Netns,
}

impl Netns {
    /// Open `path`; `Ok(None)` when it no longer exists (a gone netns).
    pub fn open(path: &str) -> Result<Option<Netns>> {
        Ok(hostnet::netns::Netns::open(path)?.map(|ns| Netns {
            path: path.to_string(),
            ns,
        }))
    }

    /// Open `path`, failing when it is absent (ADD and CHECK need the netns).
    pub fn open_required(path: &str) -> Result<Netns> {
        Netns::open(path)?.ok_or_else(|| CniError::BadEnv {
            var: "CNI_NETNS",
            reason: format!("netns {path} does not exist"),
        })
    }

    /// The open namespace, for handing it to the kernel (moving a link into it).
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.ns.fd()
    }

    /// A netlink handle inside this netns. Must be called within the tokio runtime.
    pub fn connect(&self) -> Result<Handle> {
        let rt = tokio::runtime::Handle::current();
        let path = self.path.clone();
        let (conn, handle, _) = self.ns.run(move || {
            let _guard = rt.enter();
            rtnetlink::new_connection()
                .map_err(|e| CniError::io(format!("netlink socket in {path}"), e))
        })??;
        tokio::spawn(conn);
        Ok(handle)
    }

    /// Writes each `(path, value)` sysctl (files under `/proc/sys/net/`) of this netns, in
    /// order, from one thread that has joined it: network sysctls resolve to the writer's
    /// netns.
    pub fn write_sysctls(&self, settings: &[(String, &str)]) -> Result<()> {
        let ns = self.path.clone();
        let settings: Vec<(String, String)> = settings
            .iter()
            .map(|(p, v)| (p.clone(), v.to_string()))
            .collect();
        self.ns.run(move || {
            for (path, value) in &settings {
                std::fs::write(path, value)
                    .map_err(|e| CniError::io(format!("write {path} in {ns}"), e))?;
            }
            Ok(())
        })?
    }
}

/// A netlink handle in the plugin's own (host) netns.
pub fn connect_host() -> Result<Handle> {
    let (conn, handle, _) =
        rtnetlink::new_connection().map_err(|e| CniError::io("netlink socket", e))?;
    tokio::spawn(conn);
    Ok(handle)
}
