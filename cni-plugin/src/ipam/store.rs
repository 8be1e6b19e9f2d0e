//! Built-in address store, on disk in host-local's layout so both can share a directory:
//! `<dataDir>/<net>/<ip>` holds `<containerID>\r\n<ifname>` (one file per address, of either
//! family, named by the address as host-local writes it: `10.244.3.2`, `fd00:10:244:3::2`),
//! `last_reserved_ip.<i>` remembers the round-robin position in range `i` (host-local's index
//! into `ranges`: 0 for IPv4, 1 for a dual-stack node's IPv6), and `lock` is flocked around
//! every change. Many plugin processes may run at once; the flock is what makes allocation
//! safe between them.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use ipnetwork::IpNetwork;
use nix::fcntl::{Flock, FlockArg};

use crate::error::{CniError, Result};

const LOCK_FILE: &str = "lock";

/// An address family, as the store tells its addresses apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: &IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// `n` (an address as a number) as an address of this family.
    fn addr(self, n: u128) -> IpAddr {
        match self {
            Family::V4 => IpAddr::V4(Ipv4Addr::from(u32::try_from(n).unwrap_or(u32::MAX))),
            Family::V6 => IpAddr::V6(Ipv6Addr::from(n)),
        }
    }
}

/// An address as a number, for walking a range of either family.
fn number(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// The addresses handed out from one subnet: its host addresses except the gateway. As
/// host-local: from the network address + 1 to the last address (IPv4: the one before the
/// broadcast address).
#[derive(Debug, Clone, Copy)]
pub struct Range {
    pub subnet: IpNetwork,
    pub gateway: IpAddr,
    /// This range's position in host-local's `ranges`; names its `last_reserved_ip.<index>`.
    pub index: usize,
}

impl Range {
    fn family(&self) -> Family {
        Family::of(&self.subnet.ip())
    }
    fn first(&self) -> u128 {
        number(self.subnet.network()) + 1
    }
    fn last(&self) -> u128 {
        match self.subnet {
            IpNetwork::V4(n) => u128::from(u32::from(n.broadcast())).saturating_sub(1),
            IpNetwork::V6(n) => u128::from(n.broadcast()),
        }
    }
    fn contains(&self, ip: IpAddr) -> bool {
        let n = number(ip);
        Family::of(&ip) == self.family()
            && n >= self.first()
            && n <= self.last()
            && ip != self.gateway
    }
    fn last_reserved_file(&self) -> String {
        format!("last_reserved_ip.{}", self.index)
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

    /// Reserve an address of `range` for `(cid, ifname)`: `requested` if given, else the next
    /// free one after the last reserved (round robin, as host-local).
    pub fn allocate(
        &self,
        range: &Range,
        cid: &str,
        ifname: &str,
        requested: Option<IpAddr>,
    ) -> Result<IpAddr> {
        let got = self.allocate_each(&[(*range, requested)], cid, ifname)?;
        got.first()
            .copied()
            .ok_or_else(|| CniError::Exhausted(range.subnet.to_string()))
    }

    /// Reserve one address in each range for `(cid, ifname)` (a dual-stack container's IPv4
    /// and IPv6 address), under one lock: all of them, or none (what this call reserved is
    /// released again when a later range fails).
    pub fn allocate_each(
        &self,
        wants: &[(Range, Option<IpAddr>)],
        cid: &str,
        ifname: &str,
    ) -> Result<Vec<IpAddr>> {
        let _locked = self.lock()?;
        let mut got = Vec::with_capacity(wants.len());
        for (range, requested) in wants {
            match self.allocate_locked(range, cid, ifname, *requested) {
                Ok(ip) => got.push(ip),
                Err(e) => {
                    let mut errors = vec![e];
                    for ip in &got {
                        if let Err(undo) = self.remove(*ip) {
                            errors.push(undo);
                        }
                    }
                    return Err(CniError::combine(errors)
                        .unwrap_or_else(|| CniError::Exhausted(range.subnet.to_string())));
                }
            }
        }
        Ok(got)
    }

    fn allocate_locked(
        &self,
        range: &Range,
        cid: &str,
        ifname: &str,
        requested: Option<IpAddr>,
    ) -> Result<IpAddr> {
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
        if last < first {
            return Err(CniError::Exhausted(range.subnet.to_string()));
        }
        let start = self
            .last_reserved(range)
            .map(number)
            .filter(|n| *n >= first && *n <= last)
            .map_or(first, |n| if n == last { first } else { n + 1 });
        // The walk ends at the first free address, so after at most one step more than there
        // are files, even in a /64.
        let size = last - first + 1;
        let family = range.family();
        let mut step = 0;
        while step < size {
            let ip = family.addr(first + (start - first + step) % size);
            step += 1;
            if ip == range.gateway {
                continue;
            }
            if self.reserve(ip, cid, ifname)? {
                let path = self.dir.join(range.last_reserved_file());
                fs::write(&path, ip.to_string())
                    .map_err(|e| CniError::io(format!("write {}", path.display()), e))?;
                return Ok(ip);
            }
        }
        Err(CniError::Exhausted(range.subnet.to_string()))
    }

    /// Create the file of `ip` exclusively; false when it is taken.
    fn reserve(&self, ip: IpAddr, cid: &str, ifname: &str) -> Result<bool> {
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

    fn last_reserved(&self, range: &Range) -> Option<IpAddr> {
        fs::read_to_string(self.dir.join(range.last_reserved_file()))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Release every address of `(cid, ifname)`. `hints` are addresses probably held by it
    /// (from the container or `prevResult`); when they release an address of each of
    /// `families` (those the attachment has), the directory scan is skipped. Idempotent:
    /// releasing nothing is success. Returns the released addresses.
    pub fn release(
        &self,
        cid: &str,
        ifname: &str,
        hints: &[IpAddr],
        families: &[Family],
    ) -> Result<Vec<IpAddr>> {
        let _locked = self.lock()?;
        let mut released = Vec::new();
        for ip in hints {
            if !released.contains(ip) && self.owner(*ip).is_some_and(|o| o.matches(cid, ifname)) {
                self.remove(*ip)?;
                released.push(*ip);
            }
        }
        let complete = !released.is_empty()
            && families
                .iter()
                .all(|f| released.iter().any(|ip| Family::of(ip) == *f));
        if complete {
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
    pub fn find(&self, cid: &str, ifname: &str) -> Result<Vec<IpAddr>> {
        Ok(self
            .entries()?
            .into_iter()
            .filter(|(_, o)| o.matches(cid, ifname))
            .map(|(ip, _)| ip)
            .collect())
    }

    /// Release every allocation whose owner is not in `keep`; continue past errors.
    pub fn gc(&self, keep: &HashSet<(String, String)>) -> Result<Vec<IpAddr>> {
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

    fn remove(&self, ip: IpAddr) -> Result<()> {
        let path = self.dir.join(ip.to_string());
        match fs::remove_file(&path) {
            Err(e) if e.kind() != ErrorKind::NotFound => {
                Err(CniError::io(format!("remove {}", path.display()), e))
            }
            _ => Ok(()),
        }
    }

    fn owner(&self, ip: IpAddr) -> Option<Owner> {
        fs::read_to_string(self.dir.join(ip.to_string()))
            .ok()
            .map(|t| Owner::parse(&t))
    }

    /// Every allocation file (names that parse as addresses of either family) with its owner.
    fn entries(&self) -> Result<Vec<(IpAddr, Owner)>> {
        let rd = fs::read_dir(&self.dir)
            .map_err(|e| CniError::io(format!("read {}", self.dir.display()), e))?;
        let mut out = Vec::new();
        for entry in rd.flatten() {
            let Some(ip) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<IpAddr>().ok())
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
            gateway: "10.1.2.1".parse().expect("literal"),
            index: 0,
        }
    }

    fn range6() -> Range {
        Range {
            subnet: "fd00:10:244:3::/125".parse().expect("literal"),
            gateway: "fd00:10:244:3::1".parse().expect("literal"),
            index: 1,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("literal")
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
        assert_eq!(got[0], ip("10.1.2.2"));
        assert_eq!(got[4], ip("10.1.2.6"));
        assert!(matches!(
            store.allocate(&range(), "c9", "eth0", None),
            Err(CniError::Exhausted(_))
        ));
        let text = fs::read_to_string(tmp.path().join("net/10.1.2.3")).expect("file");
        assert_eq!(text, "c1\r\neth0");
        assert_eq!(
            store.release("c1", "eth0", &[], &[]).expect("release"),
            vec![ip("10.1.2.3")]
        );
        assert!(
            store
                .release("c1", "eth0", &[], &[])
                .expect("again")
                .is_empty()
        );
        // Round robin continues after the last reserved address, then wraps to the free one.
        assert_eq!(
            store.allocate(&range(), "c5", "eth0", None).ok(),
            Some(ip("10.1.2.3"))
        );
    }

    #[test]
    fn gc_keeps_only_valid_attachments() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = Store::open(tmp.path()).expect("open");
        for c in ["a", "b", "c"] {
            let wants = [(range(), None), (range6(), None)];
            store.allocate_each(&wants, c, "eth0").expect("alloc");
        }
        let keep: HashSet<_> = [("b".to_string(), "eth0".to_string())].into();
        assert_eq!(store.gc(&keep).expect("gc").len(), 4, "two of each family");
        assert_eq!(store.find("b", "eth0").expect("find").len(), 2);
        assert!(store.find("a", "eth0").expect("find").is_empty());
    }

    #[test]
    fn dual_stack_in_host_locals_layout() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = Store::open(tmp.path()).expect("open");
        let wants = [(range(), None), (range6(), None)];
        let got = store.allocate_each(&wants, "c1", "eth0").expect("alloc");
        assert_eq!(got, vec![ip("10.1.2.2"), ip("fd00:10:244:3::2")]);
        // One file per address, named as host-local names it; one position file per range.
        let read = |name: &str| fs::read_to_string(tmp.path().join(name)).expect(name);
        assert_eq!(read("fd00:10:244:3::2"), "c1\r\neth0");
        assert_eq!(read("last_reserved_ip.0"), "10.1.2.2");
        assert_eq!(read("last_reserved_ip.1"), "fd00:10:244:3::2");
        // A /125 has ::2 to ::7 for containers (no broadcast in IPv6: ::7 is usable).
        for i in 2..=6 {
            store
                .allocate(&range6(), &format!("x{i}"), "eth0", None)
                .expect("alloc");
        }
        assert_eq!(
            store.find("x6", "eth0").expect("find"),
            vec![ip("fd00:10:244:3::7")]
        );
        // Now the IPv6 range is full: the IPv4 address reserved first is given back.
        let failed = store.allocate_each(&wants, "c2", "eth0");
        assert!(matches!(failed, Err(CniError::Exhausted(_))), "{failed:?}");
        assert!(store.find("c2", "eth0").expect("find").is_empty());
        // A requested address of each family; the gateway or a foreign family is refused.
        store.release("x3", "eth0", &[], &[]).expect("release");
        let want = [
            (range(), Some(ip("10.1.2.5"))),
            (range6(), Some(ip("fd00:10:244:3::4"))),
        ];
        let got = store.allocate_each(&want, "c3", "eth0").expect("requested");
        assert_eq!(got, vec![ip("10.1.2.5"), ip("fd00:10:244:3::4")]);
        for bad in ["fd00:10:244:3::1", "fd00:10:244:4::2", "10.1.2.6"] {
            let r = store.allocate(&range6(), "c4", "eth0", Some(ip(bad)));
            assert!(matches!(r, Err(CniError::InvalidConfig(_))), "{bad}: {r:?}");
        }
    }

    #[test]
    fn release_scans_unless_the_hints_cover_every_family() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = Store::open(tmp.path()).expect("open");
        let wants = [(range(), None), (range6(), None)];
        let both = [Family::V4, Family::V6];
        let got = store.allocate_each(&wants, "c1", "eth0").expect("alloc");
        // A hint of one family only: the scan finds the other address too.
        let released = store
            .release("c1", "eth0", &got[..1], &both)
            .expect("release");
        assert_eq!(released, got);
        assert!(store.find("c1", "eth0").expect("find").is_empty());
        // Hints of both families are enough on their own.
        let got = store.allocate_each(&wants, "c1", "eth0").expect("alloc");
        assert_eq!(
            store.release("c1", "eth0", &got, &both).expect("release"),
            got
        );
        // Hints owned by someone else are left alone.
        let theirs = store.allocate_each(&wants, "c2", "eth0").expect("alloc");
        assert!(
            store
                .release("c1", "eth0", &theirs, &both)
                .expect("release")
                .is_empty()
        );
        assert_eq!(store.find("c2", "eth0").expect("find").len(), 2);
    }
}
