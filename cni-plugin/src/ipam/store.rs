//! Built-in address store, on disk in host-local's layout so both can share a directory:
//! `<dataDir>/<net>/<ip>` holds `<containerID>\r\n<ifname>`, `last_reserved_ip.0` remembers the
//! round-robin position, and `lock` is flocked around every change. Many plugin processes may
//! run at once; the flock is what makes allocation safe between them.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::net::Ipv4Addr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use ipnetwork::Ipv4Network;
use nix::fcntl::{Flock, FlockArg};

use crate::error::{CniError, Result};

/// Round-robin position file of range 0 (host-local's name).
const LAST_RESERVED: &str = "last_reserved_ip.0";
const LOCK_FILE: &str = "lock";

/// The addresses handed out: every host address of the subnet except the gateway.
#[derive(Debug, Clone, Copy)]
pub struct Range {
    pub subnet: Ipv4Network,
    pub gateway: Ipv4Addr,
}

impl Range {
    fn first(&self) -> u32 {
        u32::from(self.subnet.network()) + 1
    }
    fn last(&self) -> u32 {
        u32::from(self.subnet.broadcast()) - 1
    }
    fn contains(&self, ip: Ipv4Addr) -> bool {
        let n = u32::from(ip);
        n >= self.first() && n <= self.last() && ip != self.gateway
    }
}

/// One network's directory of allocations.
pub struct Store {
    dir: PathBuf,
}

/// The network directory and the data directory above it.
fn check_dirs(dir: &Path) -> Result<()> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        crate::file_trust::check_dir(parent)?;
    }
    Ok(crate::file_trust::check_dir(dir)?)
}

/// Held while the store's `lock` file is flocked; dropping it unlocks.
struct Locked {
    _lock: Flock<File>,
}

impl Store {
    /// Open (creating if needed) the store directory. It and its parent (`dataDir`) must be
    /// directories only root can change ([`crate::file_trust`]).
    pub fn open(dir: &Path) -> Result<Store> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(|e| CniError::io(format!("create IPAM dir {}", dir.display()), e))?;
        check_dirs(dir)?;
        Ok(Store {
            dir: dir.to_path_buf(),
        })
    }

    /// Open an existing store; `None` when the directory is absent (nothing ever allocated).
    pub fn existing(dir: &Path) -> Result<Option<Store>> {
        if !dir.is_dir() {
            return Ok(None);
        }
        check_dirs(dir)?;
        Ok(Some(Store {
            dir: dir.to_path_buf(),
        }))
    }

    fn lock(&self) -> Result<Locked> {
        let path = self.dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(&path)
            .map_err(|e| CniError::io(format!("open {}", path.display()), e))?;
        let lock = Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| {
            CniError::io(format!("flock {}", path.display()), errno.into())
        })?;
        Ok(Locked { _lock: lock })
    }

    /// Reserve an address for `(cid, ifname)`: `requested` if given, else the next free one
    /// after the last reserved (round robin, as host-local).
    pub fn allocate(
        &self,
        range: &Range,
        cid: &str,
        ifname: &str,
        requested: Option<Ipv4Addr>,
    ) -> Result<Ipv4Addr> {
        let _locked = self.lock()?;
        if let Some(ip) = requested {
            if !range.contains(ip) {
                return Err(CniError::InvalidConfig(format!(
                    "requested address {ip} is not a host address of {}",
                    range.subnet
                )));
            }
            return match self.reserve(ip, cid, ifname)? {
                true => Ok(ip),
                false => Err(CniError::AddressTaken(ip.to_string())),
            };
        }
        let (first, last) = (range.first(), range.last());
        let start = self
            .last_reserved()
            .map(u32::from)
            .filter(|n| *n >= first && *n <= last)
            .map_or(first, |n| if n == last { first } else { n + 1 });
        let size = last - first + 1;
        for step in 0..size {
            let n = first + (start - first + step) % size;
            let ip = Ipv4Addr::from(n);
            if ip == range.gateway {
                continue;
            }
            if self.reserve(ip, cid, ifname)? {
                let path = self.dir.join(LAST_RESERVED);
                fs::write(&path, ip.to_string())
                    .map_err(|e| CniError::io(format!("write {}", path.display()), e))?;
                return Ok(ip);
            }
        }
        Err(CniError::Exhausted(range.subnet.to_string()))
    }

    /// Create the file of `ip` exclusively; false when it is taken.
    fn reserve(&self, ip: Ipv4Addr, cid: &str, ifname: &str) -> Result<bool> {
        let path = self.dir.join(ip.to_string());
        let mut file = match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(CniError::io(format!("create {}", path.display()), e)),
        };
        if let Err(e) = file.write_all(format!("{cid}\r\n{ifname}").as_bytes()) {
            let _ = fs::remove_file(&path);
            return Err(CniError::io(format!("write {}", path.display()), e));
        }
        Ok(true)
    }

    fn last_reserved(&self) -> Option<Ipv4Addr> {
        fs::read_to_string(self.dir.join(LAST_RESERVED))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Release every address of `(cid, ifname)`. `hints` are addresses probably held by it
    /// (from the container or `prevResult`); when one matches, the directory scan is skipped.
    /// Idempotent: releasing nothing is success. Returns the released addresses.
    pub fn release(&self, cid: &str, ifname: &str, hints: &[Ipv4Addr]) -> Result<Vec<Ipv4Addr>> {
        let _locked = self.lock()?;
        let mut released = Vec::new();
        for ip in hints {
            if self.owner(*ip).is_some_and(|o| o.matches(cid, ifname)) {
                self.remove(*ip)?;
                released.push(*ip);
            }
        }
        if !released.is_empty() {
            return Ok(released);
        }
        for (ip, owner) in self.entries()? {
            if owner.matches(cid, ifname) {
                self.remove(ip)?;
                released.push(ip);
            }
        }
        Ok(released)
    }

    /// Addresses held by `(cid, ifname)`.
    pub fn find(&self, cid: &str, ifname: &str) -> Result<Vec<Ipv4Addr>> {
        Ok(self
            .entries()?
            .into_iter()
            .filter(|(_, o)| o.matches(cid, ifname))
            .map(|(ip, _)| ip)
            .collect())
    }

    /// Release every allocation whose owner is not in `keep`; continue past errors.
    pub fn gc(&self, keep: &HashSet<(String, String)>) -> Result<Vec<Ipv4Addr>> {
        let _locked = self.lock()?;
        let mut released = Vec::new();
        let mut errors = Vec::new();
        for (ip, owner) in self.entries()? {
            let kept = keep.contains(&(owner.container_id.clone(), owner.ifname.clone()));
            if !kept {
                match self.remove(ip) {
                    Ok(()) => released.push(ip),
                    Err(e) => errors.push(e),
                }
            }
        }
        match CniError::combine(errors) {
            Some(e) => Err(e),
            None => Ok(released),
        }
    }

    fn remove(&self, ip: Ipv4Addr) -> Result<()> {
        let path = self.dir.join(ip.to_string());
        match fs::remove_file(&path) {
            Err(e) if e.kind() != ErrorKind::NotFound => {
                Err(CniError::io(format!("remove {}", path.display()), e))
            }
            _ => Ok(()),
        }
    }

    fn owner(&self, ip: Ipv4Addr) -> Option<Owner> {
        fs::read_to_string(self.dir.join(ip.to_string()))
            .ok()
            .map(|t| Owner::parse(&t))
    }

    /// Every allocation file (names that parse as addresses) with its owner.
    fn entries(&self) -> Result<Vec<(Ipv4Addr, Owner)>> {
        let rd = fs::read_dir(&self.dir)
            .map_err(|e| CniError::io(format!("read {}", self.dir.display()), e))?;
        let mut out = Vec::new();
        for entry in rd.flatten() {
            let Some(ip) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<Ipv4Addr>().ok())
            else {
                continue;
            };
            if let Some(owner) = self.owner(ip) {
                out.push((ip, owner));
            }
        }
        Ok(out)
    }
}

/// Content of an allocation file. Old host-local files hold only the container id.
#[derive(Debug)]
struct Owner {
    container_id: String,
    ifname: String,
}

impl Owner {
    fn parse(text: &str) -> Owner {
        let text = text.trim();
        match text.split_once("\r\n").or_else(|| text.split_once('\n')) {
            Some((cid, ifname)) => Owner {
                container_id: cid.trim().to_string(),
                ifname: ifname.trim().to_string(),
            },
            None => Owner {
                container_id: text.to_string(),
                ifname: String::new(),
            },
        }
    }

    fn matches(&self, cid: &str, ifname: &str) -> bool {
        self.container_id == cid && (self.ifname == ifname || self.ifname.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range() -> Range {
        Range {
            subnet: "10.1.2.0/29".parse().expect("literal"),
            gateway: Ipv4Addr::new(10, 1, 2, 1),
        }
    }

    #[test]
    fn allocates_round_robin_skipping_gateway_and_exhausts() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&tmp.path().join("net")).expect("open");
        let mut got = Vec::new();
        for i in 0..5 {
            got.push(store.allocate(&range(), &format!("c{i}"), "eth0", None));
        }
        let got: Vec<_> = got.into_iter().map(|r| r.expect("allocation")).collect();
        assert_eq!(got[0], Ipv4Addr::new(10, 1, 2, 2));
        assert_eq!(got[4], Ipv4Addr::new(10, 1, 2, 6));
        assert!(matches!(
            store.allocate(&range(), "c9", "eth0", None),
            Err(CniError::Exhausted(_))
        ));
        let text = fs::read_to_string(tmp.path().join("net/10.1.2.3")).expect("file");
        assert_eq!(text, "c1\r\neth0");
        assert_eq!(
            store.release("c1", "eth0", &[]).expect("release"),
            vec![Ipv4Addr::new(10, 1, 2, 3)]
        );
        assert!(store.release("c1", "eth0", &[]).expect("again").is_empty());
        // Round robin continues after the last reserved address, then wraps to the free one.
        assert_eq!(
            store.allocate(&range(), "c5", "eth0", None).ok(),
            Some(Ipv4Addr::new(10, 1, 2, 3))
        );
    }

    #[test]
    fn gc_keeps_only_valid_attachments() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = Store::open(tmp.path()).expect("open");
        for c in ["a", "b", "c"] {
            store.allocate(&range(), c, "eth0", None).expect("alloc");
        }
        let keep: HashSet<_> = [("b".to_string(), "eth0".to_string())].into();
        assert_eq!(store.gc(&keep).expect("gc").len(), 2);
        assert_eq!(store.find("b", "eth0").expect("find").len(), 1);
        assert!(store.find("a", "eth0").expect("find").is_empty());
    }
}
