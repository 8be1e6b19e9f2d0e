//! Subnet records: the key format (`10.244.3.0-24`, dual-stack `10.244.3.0-24&fd00:0:0:3::-64`,
//! IPv6-only `0.0.0.0-0&fd00:0:0:3::-64`),
//! the JSON value (flannel's `LeaseAttrs`), checking a record against the network config, and
//! picking a free subnet of either family.
//!
//! Everything here is pure, so it is tested without a KV store.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnetwork::{Ipv4Network, Ipv6Network};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::netconf::{Ipv4Config, Ipv6Config, NetworkConfig, subnet_size, subnet_size6};

/// One host's subnet, e.g. `10.244.3.0/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Subnet(pub Ipv4Network);

impl Subnet {
    /// Builds a subnet from its network address and prefix length.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Result<Self, String> {
        let net = Ipv4Network::new(addr, prefix).map_err(|e| e.to_string())?;
        if net.network() != addr {
            return Err(format!("{addr}/{prefix} is not aligned"));
        }
        Ok(Subnet(net))
    }

    /// The network address; also the VXLAN vtep address of the host owning it.
    pub fn addr(&self) -> Ipv4Addr {
        self.0.network()
    }

    /// Prefix length.
    pub fn prefix(&self) -> u8 {
        self.0.prefix()
    }

    /// The first usable address (the container gateway, written as `FLANNEL_SUBNET`).
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr()) + 1)
    }

    /// The KV key suffix, flannel's `MakeSubnetKey`: `10.244.3.0-24`.
    pub fn key(&self) -> String {
        format!("{}-{}", self.addr(), self.prefix())
    }

    /// Parses the IPv4 part of a key suffix (`10.244.3.0-24`).
    fn from_key_part(key: &str, part: &str) -> Result<Self, String> {
        let (addr, len) = split_key_part(key, part)?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("key {key:?}: bad address {addr:?}"))?;
        Subnet::new(addr, len)
    }
}

/// `<address>-<prefix>` of a key, split.
fn split_key_part<'a>(key: &str, part: &'a str) -> Result<(&'a str, u8), String> {
    let (addr, len) = part
        .rsplit_once('-')
        .ok_or_else(|| format!("key {key:?} is not <address>-<prefix>"))?;
    let len: u8 = len
        .parse()
        .map_err(|_| format!("key {key:?}: bad prefix {len:?}"))?;
    Ok((addr, len))
}

/// One host's IPv6 subnet, e.g. `fd00:10:244:3::/64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Subnet6(pub Ipv6Network);

impl Subnet6 {
    /// Builds a subnet from its network address and prefix length.
    pub fn new(addr: Ipv6Addr, prefix: u8) -> Result<Self, String> {
        let net = Ipv6Network::new(addr, prefix).map_err(|e| e.to_string())?;
        if net.network() != addr {
            return Err(format!("{addr}/{prefix} is not aligned"));
        }
        Ok(Subnet6(net))
    }

    /// The network address; also the VXLAN vtep address of the host owning it.
    pub fn addr(&self) -> Ipv6Addr {
        self.0.network()
    }

    /// Prefix length.
    pub fn prefix(&self) -> u8 {
        self.0.prefix()
    }

    /// The first address after the network address (the container gateway).
    pub fn gateway(&self) -> Ipv6Addr {
        Ipv6Addr::from(u128::from(self.addr()) + 1)
    }
}

impl fmt::Display for Subnet6 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr(), self.prefix())
    }
}

/// What a subnet record is keyed by: the IPv4 subnet and the IPv6 one, each present when the
/// network has that family (flannel's `EnableIPv4`, `EnableIPv6`); at least one is. Two
/// records differing only in one part are two records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SubnetKey {
    /// `None` only in an IPv6-only network.
    pub v4: Option<Subnet>,
    pub v6: Option<Subnet6>,
}

/// The IPv4 part flannel's `MakeSubnetKey` writes for a lease without an IPv4 subnet (its
/// empty `IP4Net`): an IPv6-only key is `0.0.0.0-0&fd00:10:244:3::-64`.
const NO_V4_PART: &str = "0.0.0.0-0";

impl SubnetKey {
    /// An IPv4-only key.
    pub fn v4(v4: Subnet) -> Self {
        SubnetKey {
            v4: Some(v4),
            v6: None,
        }
    }

    /// An IPv6-only key.
    pub fn v6(v6: Subnet6) -> Self {
        SubnetKey {
            v4: None,
            v6: Some(v6),
        }
    }

    /// The KV key suffix, flannel's `MakeSubnetKey`: `10.244.3.0-24`,
    /// `10.244.3.0-24&fd00:10:244:3::-64` (the IPv6 address in its shortest form), or for an
    /// IPv6-only network `0.0.0.0-0&fd00:10:244:3::-64`.
    pub fn key(&self) -> String {
        let v4 = self.v4.map_or(NO_V4_PART.to_string(), |s| s.key());
        match self.v6 {
            None => v4,
            Some(v6) => format!("{v4}&{}-{}", v6.addr(), v6.prefix()),
        }
    }

    /// Parses a key suffix as flannel's `ParseSubnetKey` reads it; `0.0.0.0-0` before an
    /// IPv6 part means no IPv4 subnet (an IPv6-only record).
    pub fn from_key(key: &str) -> Result<Self, String> {
        let (v4, v6) = match key.split_once('&') {
            Some((a, b)) => (a, Some(b)),
            None => (key, None),
        };
        let v4 = match (v4, v6) {
            (NO_V4_PART, Some(_)) => None,
            (NO_V4_PART, None) => {
                return Err(format!(
                    "key {key:?} names no subnet (0.0.0.0/0 and no IPv6 part)"
                ));
            }
            (part, _) => Some(Subnet::from_key_part(key, part)?),
        };
        let v6 = match v6 {
            None => None,
            Some(part) => {
                let (addr, len) = split_key_part(key, part)?;
                if !addr.chars().all(|c| c.is_ascii_hexdigit() || c == ':') {
                    return Err(format!("key {key:?}: bad IPv6 address {addr:?}"));
                }
                let addr: Ipv6Addr = addr
                    .parse()
                    .map_err(|_| format!("key {key:?}: bad IPv6 address {addr:?}"))?;
                Some(Subnet6::new(addr, len)?)
            }
        };
        Ok(SubnetKey { v4, v6 })
    }
}

impl fmt::Display for SubnetKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.v4, self.v6) {
            (Some(v4), None) => write!(f, "{v4}"),
            (Some(v4), Some(v6)) => write!(f, "{v4},{v6}"),
            (None, Some(v6)) => write!(f, "{v6}"),
            (None, None) => write!(f, "0.0.0.0/0"),
        }
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr(), self.prefix())
    }
}

/// A MAC address, written `aa:bb:cc:dd:ee:ff`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// A random, locally administered, unicast MAC (chosen before link creation so udev's
    /// MACAddressPolicy cannot replace it).
    pub fn random() -> Self {
        let mut b: [u8; 6] = rand::rng().random();
        b[0] = (b[0] & 0xfe) | 0x02;
        MacAddr(b)
    }

    /// True for a usable unicast, non-zero address.
    pub fn is_unicast(&self) -> bool {
        self.0[0] & 1 == 0 && self.0 != [0; 6]
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for MacAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut out {
            let p = parts.next().ok_or_else(|| format!("bad MAC {s:?}"))?;
            if p.len() != 2 {
                return Err(format!("bad MAC {s:?}"));
            }
            *byte = u8::from_str_radix(p, 16).map_err(|_| format!("bad MAC {s:?}"))?;
        }
        if parts.next().is_some() {
            return Err(format!("bad MAC {s:?}"));
        }
        Ok(MacAddr(out))
    }
}

impl Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The JSON value of a subnet record, flannel's `LeaseAttrs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseAttrs {
    /// `0.0.0.0` in an IPv6-only network, as flannel writes it (its zero `IP4`): the host is
    /// then known by `PublicIPv6`.
    #[serde(rename = "PublicIP")]
    pub public_ip: Ipv4Addr,
    #[serde(
        rename = "PublicIPv6",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub public_ipv6: Option<Ipv6Addr>,
    #[serde(rename = "BackendType")]
    pub backend_type: String,
    #[serde(
        rename = "BackendData",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub backend_data: Option<VxlanData>,
    /// The IPv6 VXLAN device's data (`flannel-v6.<VNI>`'s VtepMAC).
    #[serde(
        rename = "BackendV6Data",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub backend_v6_data: Option<VxlanData>,
}

impl LeaseAttrs {
    /// True when both records name the same host: by PublicIP, or in an IPv6-only network
    /// (`ipv4` false), where every PublicIP is `0.0.0.0`, by PublicIPv6.
    pub fn same_host(&self, other: &LeaseAttrs, ipv4: bool) -> bool {
        if ipv4 {
            self.public_ip == other.public_ip
        } else {
            self.public_ipv6.is_some() && self.public_ipv6 == other.public_ipv6
        }
    }

    /// The address the host is known by, for messages: PublicIP, or PublicIPv6 without IPv4.
    pub fn host_ip(&self, ipv4: bool) -> std::net::IpAddr {
        match (ipv4, self.public_ipv6) {
            (false, Some(ip6)) => ip6.into(),
            _ => self.public_ip.into(),
        }
    }
}

/// `BackendData` of a vxlan record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VxlanData {
    #[serde(rename = "VNI", default)]
    pub vni: u32,
    #[serde(rename = "VtepMAC")]
    pub vtep_mac: MacAddr,
}

/// A subnet record read from the KV store and checked against the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRecord {
    pub subnet: SubnetKey,
    pub attrs: LeaseAttrs,
    /// KV lease id; 0 marks a reservation (never expires, never taken by another host).
    pub lease: i64,
    /// Revision at which the record was created (the KV `create_revision`; a renewal keeps it).
    /// Of two records that claim the same kernel object, the older keeps it.
    pub create_revision: i64,
    /// Revision of the last change, used for compare-and-swap updates.
    pub mod_revision: i64,
}

impl PeerRecord {
    /// True when the record has no KV lease: an operator's reservation.
    pub fn is_reservation(&self) -> bool {
        self.lease == 0
    }
}

/// Parses and checks one record. `key_suffix` is the part after `<prefix>/subnets/`.
///
/// A record is rejected (and must then be ignored by the caller) when its key or JSON is
/// malformed, its subnet is not exactly one `SubnetLen` block inside `Network`, its public IP
/// lies inside the cluster network or is not a unicast address, or its backend data is unusable.
pub fn parse_record(
    config: &NetworkConfig,
    key_suffix: &str,
    value: &[u8],
    lease: i64,
    create_revision: i64,
    mod_revision: i64,
) -> Result<PeerRecord> {
    let bad = |reason: String| Error::BadRecord {
        key: key_suffix.to_string(),
        reason,
    };
    let subnet = SubnetKey::from_key(key_suffix).map_err(bad)?;
    // The halves this node routes are checked; a half of a family it does not route is
    // ignored (an IPv4-only node reads a dual-stack record as an IPv4 one).
    match (&config.ipv4, subnet.v4) {
        (Some(c4), Some(v4)) => check_subnet(c4, v4).map_err(bad)?,
        (Some(_), None) => {
            return Err(bad(
                "IPv6-only record (no IPv4 subnet) in a network with IPv4".into(),
            ));
        }
        (None, _) => {}
    }
    match (&config.ipv6, subnet.v6) {
        (Some(c6), Some(v6)) => check_subnet6(c6, v6).map_err(bad)?,
        (Some(_), None) if config.ipv4.is_none() => {
            return Err(bad(
                "record without an IPv6 subnet in an IPv6-only network".into()
            ));
        }
        _ => {}
    }
    let attrs: LeaseAttrs =
        serde_json::from_slice(value).map_err(|e| bad(format!("bad JSON value: {e}")))?;
    if let Some(c4) = &config.ipv4 {
        let ip = attrs.public_ip;
        if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() || ip.is_broadcast() {
            return Err(bad(format!("PublicIP {ip} is not a unicast host address")));
        }
        if c4.network.contains(ip) {
            return Err(bad(format!(
                "PublicIP {ip} lies inside the cluster network {}",
                c4.network
            )));
        }
        if attrs.backend_type == "vxlan" {
            match &attrs.backend_data {
                Some(d) if d.vtep_mac.is_unicast() => {}
                Some(d) => return Err(bad(format!("VtepMAC {} is not unicast", d.vtep_mac))),
                None => return Err(bad("vxlan record without BackendData.VtepMAC".into())),
            }
        }
    }
    // The IPv6 half is checked only where this node routes IPv6 (and the record has a v6 subnet).
    if let (Some(_), Some(c6)) = (subnet.v6, &config.ipv6) {
        let Some(ip6) = attrs.public_ipv6 else {
            return Err(bad("record with an IPv6 subnet but no PublicIPv6".into()));
        };
        if ip6.is_unspecified() || ip6.is_loopback() || ip6.is_multicast() {
            return Err(bad(format!(
                "PublicIPv6 {ip6} is not a unicast host address"
            )));
        }
        if c6.network.contains(ip6) {
            return Err(bad(format!(
                "PublicIPv6 {ip6} lies inside the cluster network {}",
                c6.network
            )));
        }
        if attrs.backend_type == "vxlan" {
            match &attrs.backend_v6_data {
                Some(d) if d.vtep_mac.is_unicast() => {}
                Some(d) => return Err(bad(format!("v6 VtepMAC {} is not unicast", d.vtep_mac))),
                None => {
                    return Err(bad(
                        "vxlan record with an IPv6 subnet but no BackendV6Data.VtepMAC".into(),
                    ));
                }
            }
        }
    }
    Ok(PeerRecord {
        subnet,
        attrs,
        lease,
        create_revision,
        mod_revision,
    })
}

/// Checks that `subnet` is one whole `SubnetLen` block inside the cluster network.
pub fn check_subnet(config: &Ipv4Config, subnet: Subnet) -> Result<(), String> {
    if subnet.prefix() != config.subnet_len {
        return Err(format!(
            "subnet {subnet} does not have the configured length /{}",
            config.subnet_len
        ));
    }
    if !config.network.contains(subnet.addr()) {
        return Err(format!(
            "subnet {subnet} is outside the network {}",
            config.network
        ));
    }
    Ok(())
}

/// Checks that `subnet` is one whole `IPv6SubnetLen` block inside the IPv6 network.
pub fn check_subnet6(config: &Ipv6Config, subnet: Subnet6) -> Result<(), String> {
    if subnet.prefix() != config.subnet_len {
        return Err(format!(
            "IPv6 subnet {subnet} does not have the configured length /{}",
            config.subnet_len
        ));
    }
    if !config.network.contains(subnet.addr()) {
        return Err(format!(
            "IPv6 subnet {subnet} is outside the network {}",
            config.network
        ));
    }
    Ok(())
}

/// True when a record's key fits this config as flannel judges it (`isSubnetConfigCompat` and
/// `isIPv6SubnetConfigCompat`): exactly when IPv4 is on, an IPv4 subnet in range, and exactly
/// when IPv6 is on, an IPv6 subnet in range.
pub fn key_fits(config: &NetworkConfig, key: SubnetKey) -> bool {
    (match (&config.ipv4, key.v4) {
        (None, None) => true,
        (Some(c4), Some(v4)) => in_allocatable_range(c4, v4),
        _ => false,
    }) && match (&config.ipv6, key.v6) {
        (None, None) => true,
        (Some(c6), Some(v6)) => in_allocatable_range6(c6, v6),
        _ => false,
    }
}

/// True when `subnet` may be handed out: valid and between IPv6SubnetMin and IPv6SubnetMax.
pub fn in_allocatable_range6(config: &Ipv6Config, subnet: Subnet6) -> bool {
    let a = u128::from(subnet.addr());
    check_subnet6(config, subnet).is_ok()
        && a >= u128::from(config.subnet_min)
        && a <= u128::from(config.subnet_max)
}

/// True when `subnet` may be handed out: valid and between SubnetMin and SubnetMax.
pub fn in_allocatable_range(config: &Ipv4Config, subnet: Subnet) -> bool {
    let a = u32::from(subnet.addr());
    check_subnet(config, subnet).is_ok()
        && a >= u32::from(config.subnet_min)
        && a <= u32::from(config.subnet_max)
}

/// Picks a free subnet uniformly at random among all free subnets between SubnetMin and SubnetMax.
///
/// `taken` holds the network addresses of every existing record (leases and reservations).
pub fn pick_free(
    config: &Ipv4Config,
    taken: &BTreeSet<Ipv4Addr>,
    rng: &mut impl Rng,
) -> Result<Subnet> {
    let size = u128::from(subnet_size(config.subnet_len));
    let min = u128::from(u32::from(config.subnet_min));
    let total = u128::from(config.subnet_count());
    let taken = taken.iter().map(|a| u128::from(u32::from(*a)));
    let addr = pick_index(min, size, total, taken, rng).ok_or_else(|| Error::OutOfSubnets {
        network: config.network.to_string(),
        total: total as u64,
    })?;
    Subnet::new(Ipv4Addr::from(addr as u32), config.subnet_len).map_err(Error::Kernel)
}

/// The same for the IPv6 network.
pub fn pick_free6(
    config: &Ipv6Config,
    taken: &BTreeSet<Ipv6Addr>,
    rng: &mut impl Rng,
) -> Result<Subnet6> {
    let size = subnet_size6(config.subnet_len);
    let min = u128::from(config.subnet_min);
    let total = config.subnet_count();
    let taken = taken.iter().map(|a| u128::from(*a));
    let addr = pick_index(min, size, total, taken, rng).ok_or_else(|| Error::OutOfSubnets {
        network: config.network.to_string(),
        total: u64::try_from(total).unwrap_or(u64::MAX),
    })?;
    Subnet6::new(Ipv6Addr::from(addr), config.subnet_len).map_err(Error::Kernel)
}

/// The address of a free block picked uniformly among `total` blocks of `size` from `min`,
/// skipping the `taken` addresses (ascending); `None` when every block is taken.
fn pick_index(
    min: u128,
    size: u128,
    total: u128,
    taken: impl Iterator<Item = u128>,
    rng: &mut impl Rng,
) -> Option<u128> {
    // Indices (0-based, from the minimum) of taken blocks inside the range, ascending.
    let taken_idx: Vec<u128> = taken
        .filter(|a| *a >= min && (*a - min).is_multiple_of(size) && (*a - min) / size < total)
        .map(|a| (a - min) / size)
        .collect();
    let free = total - taken_idx.len() as u128;
    if free == 0 {
        return None;
    }
    // The k-th free index: start at k and step over every taken index at or below the candidate.
    let mut candidate = rng.random_range(0..free);
    for t in taken_idx {
        if t <= candidate {
            candidate += 1;
        } else {
            break;
        }
    }
    Some(min + candidate * size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn cfg(text: &str) -> NetworkConfig {
        NetworkConfig::parse(text).unwrap()
    }

    #[test]
    fn key_round_trip() {
        let s = SubnetKey::from_key("10.244.3.0-24").unwrap();
        assert_eq!(s.key(), "10.244.3.0-24");
        assert_eq!(s.v4.unwrap().gateway(), Ipv4Addr::new(10, 244, 3, 1));
        assert_eq!(s.to_string(), "10.244.3.0/24");
        assert_eq!(s.v6, None);
        let d = SubnetKey::from_key("10.5.52.0-24&fc00::-64").unwrap();
        assert_eq!(d.key(), "10.5.52.0-24&fc00::-64");
        assert_eq!(d.v4, s.v4.max(d.v4).min(d.v4));
        let v6 = d.v6.unwrap();
        assert_eq!(v6.to_string(), "fc00::/64");
        assert_eq!(v6.gateway(), "fc00::1".parse::<Ipv6Addr>().unwrap());
        assert_eq!(d.to_string(), "10.5.52.0/24,fc00::/64");
        // flannel writes the IPv6 address in its shortest form; netd too.
        let long = SubnetKey::from_key("10.5.52.0-24&fd00:0:0:3:0:0:0:0-64").unwrap();
        assert_eq!(long.key(), "10.5.52.0-24&fd00:0:0:3::-64");
        for bad in [
            "",
            "10.244.3.0",
            "10.244.3.1-24",
            "x-24",
            "10.0.0.0-40",
            "10.0.0.0-x",
            "10.0.0.0-24&",
            "10.0.0.0-24&fc00::",
            "10.0.0.0-24&fc00::1-64",
            "10.0.0.0-24&fc00::-129",
            "10.0.0.0-24&::ffff:1.2.3.4-120",
        ] {
            assert!(SubnetKey::from_key(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn mac_parse_and_random() {
        let m: MacAddr = "c6:d2:32:6f:8f:44".parse().unwrap();
        assert_eq!(m.to_string(), "c6:d2:32:6f:8f:44");
        for bad in [
            "",
            "c6:d2:32:6f:8f",
            "c6:d2:32:6f:8f:44:00",
            "zz:d2:32:6f:8f:44",
            "c6d2:32:6f:8f:44",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
        for _ in 0..50 {
            let r = MacAddr::random();
            assert!(r.is_unicast());
            assert_eq!(r.0[0] & 2, 2, "locally administered");
        }
    }

    #[test]
    fn record_checks() {
        let c = cfg(r#"{"Network":"10.244.0.0/16"}"#);
        let good = br#"{"PublicIP":"192.0.2.3","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#;
        let r = parse_record(&c, "10.244.3.0-24", good, 7, 8, 9).unwrap();
        assert_eq!(r.attrs.public_ip, Ipv4Addr::new(192, 0, 2, 3));
        assert!(!r.is_reservation());
        // Serialises back to flannel's field names.
        let json = serde_json::to_string(&r.attrs).unwrap();
        assert!(json.contains(r#""PublicIP":"192.0.2.3""#) && json.contains("VtepMAC"));

        let cases: [(&str, &[u8], &str); 8] = [
            ("10.245.3.0-24", good, "outside"),
            ("0.0.0.0-0", good, "names no subnet"),
            ("10.244.3.0-25", good, "length"),
            ("10.244.3.0-24", b"{not json", "JSON"),
            ("10.244.3.0-24", br#"{"PublicIP":"10.244.9.9","BackendType":"host-gw"}"#, "inside"),
            ("10.244.3.0-24", br#"{"PublicIP":"0.0.0.0","BackendType":"host-gw"}"#, "unicast"),
            ("10.244.3.0-24", br#"{"PublicIP":"192.0.2.3","BackendType":"vxlan"}"#, "VtepMAC"),
            (
                "10.244.3.0-24",
                br#"{"PublicIP":"192.0.2.3","BackendType":"vxlan","BackendData":{"VtepMAC":"ff:ff:ff:ff:ff:ff"}}"#,
                "unicast",
            ),
        ];
        for (key, value, want) in cases {
            let e = parse_record(&c, key, value, 1, 1, 1)
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{key}: {e} should mention {want}");
        }
    }

    #[test]
    fn pick_free_is_uniform_over_free_subnets_and_exhausts() {
        let c = cfg(r#"{"Network":"10.1.0.0/26"}"#); // subnets .16 .32 .48 (/28)
        let c = c.ipv4.unwrap();
        let mut rng = StdRng::seed_from_u64(7);
        let mut taken = BTreeSet::new();
        taken.insert(Ipv4Addr::new(10, 1, 0, 32));
        taken.insert(Ipv4Addr::new(10, 1, 0, 0)); // outside the range: ignored
        let mut seen = BTreeSet::new();
        for _ in 0..200 {
            let s = pick_free(&c, &taken, &mut rng).unwrap();
            assert_ne!(s.addr(), Ipv4Addr::new(10, 1, 0, 32));
            assert!(in_allocatable_range(&c, s));
            seen.insert(s.addr());
        }
        assert_eq!(seen.len(), 2, "both free subnets get picked: {seen:?}");
        assert!(in_allocatable_range(
            &c,
            Subnet::new(Ipv4Addr::new(10, 1, 0, 16), 28).unwrap()
        ));
        taken.insert(Ipv4Addr::new(10, 1, 0, 16));
        taken.insert(Ipv4Addr::new(10, 1, 0, 48));
        let e = pick_free(&c, &taken, &mut rng).unwrap_err();
        assert!(matches!(e, Error::OutOfSubnets { total: 3, .. }), "{e}");
        assert!(e.to_string().contains("out of subnets"));
    }

    #[test]
    fn pick_free6_over_a_huge_range() {
        let c = cfg(r#"{"Network":"10.0.0.0/8","EnableIPv6":true,"IPv6Network":"fd00::/16"}"#);
        let c6 = c.ipv6.clone().unwrap();
        assert_eq!(c6.subnet_count(), (1u128 << 48) - 1);
        let mut rng = StdRng::seed_from_u64(3);
        let mut taken = BTreeSet::new();
        for _ in 0..200 {
            let s = pick_free6(&c6, &taken, &mut rng).unwrap();
            assert!(in_allocatable_range6(&c6, s), "{s}");
            assert!(taken.insert(s.addr()), "picked twice: {s}");
        }
        // A small range is exhausted exactly.
        let c = cfg(r#"{"Network":"10.0.0.0/8","EnableIPv6":true,"IPv6Network":"fd00::/120"}"#);
        let c6 = c.ipv6.clone().unwrap();
        let mut taken = BTreeSet::new();
        for _ in 0..3 {
            taken.insert(pick_free6(&c6, &taken, &mut rng).unwrap().addr());
        }
        let e = pick_free6(&c6, &taken, &mut rng).unwrap_err();
        assert!(matches!(e, Error::OutOfSubnets { total: 3, .. }), "{e}");
        // Which key fits: v6 exactly when the config has IPv6.
        let both = SubnetKey::from_key("10.0.1.0-24&fd00::40-122").unwrap();
        let v4 = SubnetKey::from_key("10.0.1.0-24").unwrap();
        assert!(key_fits(&c, both));
        assert!(!key_fits(&c, v4));
        let c4 = cfg(r#"{"Network":"10.0.0.0/8"}"#);
        assert!(key_fits(&c4, v4));
        assert!(!key_fits(&c4, both));
    }

    #[test]
    fn dual_stack_record_checks() {
        let c = cfg(
            r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56"}"#,
        );
        let good = br#"{"PublicIP":"192.0.2.3","PublicIPv6":"2001:db8::3","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"},"BackendV6Data":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:45"}}"#;
        let r = parse_record(&c, "10.244.3.0-24&fd00:10:244:3::-64", good, 7, 8, 9).unwrap();
        assert_eq!(r.attrs.public_ipv6, Some("2001:db8::3".parse().unwrap()));
        assert_eq!(
            r.attrs.backend_v6_data.as_ref().unwrap().vtep_mac.0[5],
            0x45
        );
        let json = serde_json::to_string(&r.attrs).unwrap();
        assert!(
            json.contains(r#""PublicIPv6":"2001:db8::3""#) && json.contains("BackendV6Data"),
            "{json}"
        );
        // flannel writes `"PublicIPv6":null` on IPv4-only records.
        let v4only = br#"{"PublicIP":"192.0.2.4","PublicIPv6":null,"BackendType":"host-gw"}"#;
        assert!(parse_record(&c, "10.244.4.0-24", v4only, 1, 1, 1).is_ok());
        let cases: [(&str, &[u8], &str); 5] = [
            ("10.244.3.0-24&fd00:10:245:3::-64", good, "outside"),
            ("10.244.3.0-24&fd00:10:244:3::-80", good, "length"),
            (
                "10.244.3.0-24&fd00:10:244:3::-64",
                br#"{"PublicIP":"192.0.2.3","BackendType":"host-gw"}"#,
                "PublicIPv6",
            ),
            (
                "10.244.3.0-24&fd00:10:244:3::-64",
                br#"{"PublicIP":"192.0.2.3","PublicIPv6":"fd00:10:244:9::1","BackendType":"host-gw"}"#,
                "inside",
            ),
            (
                "10.244.3.0-24&fd00:10:244:3::-64",
                br#"{"PublicIP":"192.0.2.3","PublicIPv6":"2001:db8::3","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#,
                "BackendV6Data",
            ),
        ];
        for (key, value, want) in cases {
            let e = parse_record(&c, key, value, 1, 1, 1)
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{key}: {e} should mention {want}");
        }
        // An IPv4-only node reads a dual-stack record and ignores its IPv6 half.
        let c4 = cfg(r#"{"Network":"10.244.0.0/16"}"#);
        assert!(parse_record(&c4, "10.244.3.0-24&fd00:10:245:3::-64", good, 1, 1, 1).is_ok());
    }

    #[test]
    fn ipv6_only_keys_and_records_as_flannel_writes_them() {
        // flannel's MakeSubnetKey with an empty IPv4 net, and ParseSubnetKey reading it back.
        let k = SubnetKey::from_key("0.0.0.0-0&fd00:10:244:3::-64").unwrap();
        assert_eq!(k.v4, None);
        assert_eq!(k, SubnetKey::v6(k.v6.unwrap()));
        assert_eq!(k.key(), "0.0.0.0-0&fd00:10:244:3::-64");
        assert_eq!(k.to_string(), "fd00:10:244:3::/64");
        assert!(SubnetKey::from_key("0.0.0.0-0").is_err());
        assert!(SubnetKey::from_key("0.0.0.0-0&").is_err());
        let c = cfg(r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/56"}"#);
        // The record flanneld's vxlan backend writes without IPv4: PublicIP is its zero
        // address, no BackendData.
        let good = br#"{"PublicIP":"0.0.0.0","PublicIPv6":"2001:db8::3","BackendType":"vxlan","BackendV6Data":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:45"}}"#;
        let r = parse_record(&c, "0.0.0.0-0&fd00:10:244:3::-64", good, 7, 8, 9).unwrap();
        assert_eq!(r.attrs.public_ip, Ipv4Addr::UNSPECIFIED);
        assert_eq!(
            r.attrs.host_ip(false),
            "2001:db8::3".parse::<std::net::IpAddr>().unwrap()
        );
        let json = serde_json::to_string(&r.attrs).unwrap();
        assert!(json.contains(r#""PublicIP":"0.0.0.0""#), "{json}");
        assert!(!json.contains(r#""BackendData""#), "{json}");
        assert!(key_fits(&c, r.subnet));
        let cases: [(&str, &[u8], &str); 4] = [
            ("10.244.3.0-24", good, "IPv6-only network"),
            ("0.0.0.0-0&fd00:10:245:3::-64", good, "outside"),
            (
                "0.0.0.0-0&fd00:10:244:3::-64",
                br#"{"PublicIP":"0.0.0.0","BackendType":"host-gw"}"#,
                "PublicIPv6",
            ),
            (
                "0.0.0.0-0&fd00:10:244:3::-64",
                br#"{"PublicIP":"0.0.0.0","PublicIPv6":"2001:db8::3","BackendType":"vxlan"}"#,
                "BackendV6Data",
            ),
        ];
        for (key, value, want) in cases {
            let e = parse_record(&c, key, value, 1, 1, 1)
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{key}: {e} should mention {want}");
        }
        // A dual-stack record read by an IPv6-only node: its IPv6 half is used, but its key
        // does not fit (it would not be reused as this node's own).
        let dual = SubnetKey::from_key("10.244.3.0-24&fd00:10:244:3::-64").unwrap();
        assert!(!key_fits(&c, dual));
        // An IPv6-only record is refused where the network has IPv4.
        let c46 = cfg(
            r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56"}"#,
        );
        let e = parse_record(&c46, "0.0.0.0-0&fd00:10:244:3::-64", good, 1, 1, 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no IPv4 subnet"), "{e}");
        assert!(!key_fits(&c46, k));
        // Host identity: by PublicIPv6 when every PublicIP is 0.0.0.0.
        let mut other = r.attrs.clone();
        assert!(other.same_host(&r.attrs, false));
        other.public_ipv6 = Some("2001:db8::4".parse().unwrap());
        assert!(!other.same_host(&r.attrs, false));
        assert!(
            other.same_host(&r.attrs, true),
            "both PublicIPs are 0.0.0.0"
        );
    }

    #[test]
    fn pick_free_large_network() {
        let c = cfg(r#"{"Network":"10.0.0.0/8","SubnetLen":30}"#);
        let c = c.ipv4.unwrap();
        let mut rng = StdRng::seed_from_u64(1);
        let taken: BTreeSet<_> = (1..1000u32)
            .map(|i| Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 0, 0, 0)) + i * 4))
            .collect();
        for _ in 0..100 {
            let s = pick_free(&c, &taken, &mut rng).unwrap();
            assert!(!taken.contains(&s.addr()));
            assert!(in_allocatable_range(&c, s));
        }
    }
}
