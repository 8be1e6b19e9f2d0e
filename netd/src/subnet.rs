//! Subnet records: the key format (`10.244.3.0-24`), the JSON value (flannel's `LeaseAttrs`),
//! checking a record against the network config, and picking a free subnet.
//!
//! Everything here is pure, so it is tested without a KV store.

use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use ipnetwork::Ipv4Network;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::netconf::{NetworkConfig, subnet_size};

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

    /// Parses a key suffix. A dual-stack suffix (`&<v6>-<len>`) is accepted and its IPv6 part ignored.
    pub fn from_key(key: &str) -> Result<Self, String> {
        let v4 = key.split('&').next().unwrap_or(key);
        let (addr, len) = v4
            .rsplit_once('-')
            .ok_or_else(|| format!("key {key:?} is not <address>-<prefix>"))?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("key {key:?}: bad address {addr:?}"))?;
        let len: u8 = len
            .parse()
            .map_err(|_| format!("key {key:?}: bad prefix {len:?}"))?;
        Subnet::new(addr, len)
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
    #[serde(rename = "PublicIP")]
    pub public_ip: Ipv4Addr,
    #[serde(
        rename = "PublicIPv6",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub public_ipv6: Option<String>,
    #[serde(rename = "BackendType")]
    pub backend_type: String,
    #[serde(
        rename = "BackendData",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub backend_data: Option<VxlanData>,
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
    pub subnet: Subnet,
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
    let subnet = Subnet::from_key(key_suffix).map_err(bad)?;
    check_subnet(config, subnet).map_err(bad)?;
    let attrs: LeaseAttrs =
        serde_json::from_slice(value).map_err(|e| bad(format!("bad JSON value: {e}")))?;
    let ip = attrs.public_ip;
    if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() || ip.is_broadcast() {
        return Err(bad(format!("PublicIP {ip} is not a unicast host address")));
    }
    if config.network.contains(ip) {
        return Err(bad(format!(
            "PublicIP {ip} lies inside the cluster network {}",
            config.network
        )));
    }
    if attrs.backend_type == "vxlan" {
        match &attrs.backend_data {
            Some(d) if d.vtep_mac.is_unicast() => {}
            Some(d) => return Err(bad(format!("VtepMAC {} is not unicast", d.vtep_mac))),
            None => return Err(bad("vxlan record without BackendData.VtepMAC".into())),
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
pub fn check_subnet(config: &NetworkConfig, subnet: Subnet) -> Result<(), String> {
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

/// True when `subnet` may be handed out: valid and between SubnetMin and SubnetMax.
pub fn in_allocatable_range(config: &NetworkConfig, subnet: Subnet) -> bool {
    let a = u32::from(subnet.addr());
    check_subnet(config, subnet).is_ok()
        && a >= u32::from(config.subnet_min)
        && a <= u32::from(config.subnet_max)
}

/// Picks a free subnet uniformly at random among all free subnets between SubnetMin and SubnetMax.
///
/// `taken` holds the network addresses of every existing record (leases and reservations).
pub fn pick_free(
    config: &NetworkConfig,
    taken: &BTreeSet<Ipv4Addr>,
    rng: &mut impl Rng,
) -> Result<Subnet> {
    let size = u64::from(subnet_size(config.subnet_len));
    let min = u64::from(u32::from(config.subnet_min));
    let total = config.subnet_count();
    // Indices (0-based, from SubnetMin) of taken subnets inside the range, ascending.
    let taken_idx: Vec<u64> = taken
        .iter()
        .map(|a| u64::from(u32::from(*a)))
        .filter(|a| *a >= min && (*a - min) % size == 0 && (*a - min) / size < total)
        .map(|a| (a - min) / size)
        .collect();
    let free = total - taken_idx.len() as u64;
    if free == 0 {
        return Err(Error::OutOfSubnets {
            network: config.network.to_string(),
            total,
        });
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
    let addr = Ipv4Addr::from((min + candidate * size) as u32);
    Subnet::new(addr, config.subnet_len).map_err(Error::Kernel)
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
        let s = Subnet::from_key("10.244.3.0-24").unwrap();
        assert_eq!(s.key(), "10.244.3.0-24");
        assert_eq!(s.gateway(), Ipv4Addr::new(10, 244, 3, 1));
        assert_eq!(s.to_string(), "10.244.3.0/24");
        let d = Subnet::from_key("10.5.52.0-24&fc00::-64").unwrap();
        assert_eq!(d.key(), "10.5.52.0-24");
        for bad in [
            "",
            "10.244.3.0",
            "10.244.3.1-24",
            "x-24",
            "10.0.0.0-40",
            "10.0.0.0-x",
        ] {
            assert!(Subnet::from_key(bad).is_err(), "{bad}");
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
            ("0.0.0.0-0", good, "length"),
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
        taken.insert(Ipv4Addr::new(10, 1, 0, 16));
        taken.insert(Ipv4Addr::new(10, 1, 0, 48));
        let e = pick_free(&c, &taken, &mut rng).unwrap_err();
        assert!(matches!(e, Error::OutOfSubnets { total: 3, .. }), "{e}");
        assert!(e.to_string().contains("out of subnets"));
    }

    #[test]
    fn pick_free_large_network() {
        let c = cfg(r#"{"Network":"10.0.0.0/8","SubnetLen":30}"#);
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
