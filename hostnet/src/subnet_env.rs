//! `subnet.env`, the one contract between netd and netd-cni (flannel's format): netd renders
//! and writes it, atomically, into a directory only root (or netd's user) can change; the
//! plugin (and netd, at start-up) parse it back.
//!
//! ```text
//! FLANNEL_NETWORK=10.244.0.0/16
//! FLANNEL_SUBNET=10.244.3.1/24
//! FLANNEL_IPV6_NETWORK=fd00:10:244::/56
//! FLANNEL_IPV6_SUBNET=fd00:10:244:3::1/64
//! FLANNEL_MTU=1450
//! FLANNEL_IPMASQ=false
//! ```
//! `FLANNEL_SUBNET` holds the gateway address with the subnet's prefix. The IPv6 pair is
//! there only when the network has IPv6 (flannel's `EnableIPv6`), in flannel's order: after the
//! IPv4 lines, before `FLANNEL_MTU`; `FLANNEL_IPV6_SUBNET` holds the IPv6 gateway the same way.
//! An IPv6-only network (`"EnableIPv4": false`) has no IPv4 pair, as flannel's
//! `WriteSubnetFile` leaves it out; a file names at least one pair.

use std::io::Write;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

use ipnetwork::{Ipv4Network, Ipv6Network};

use crate::error::{Error, Result};

/// What the node's subnet file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetEnv {
    /// The IPv4 side (`FLANNEL_NETWORK`, `FLANNEL_SUBNET`); `None` in an IPv6-only network.
    pub ipv4: Option<Ipv4Env>,
    pub mtu: u32,
    /// True when netd masquerades itself, so the plugin must not.
    pub ipmasq: bool,
    /// The IPv6 side (`FLANNEL_IPV6_NETWORK`, `FLANNEL_IPV6_SUBNET`); `None` when the network
    /// is IPv4 only.
    pub ipv6: Option<Ipv6Env>,
}

/// The IPv4 half of a node's subnet file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Env {
    /// The whole cluster network (`FLANNEL_NETWORK`).
    pub network: Ipv4Network,
    /// The node subnet, network address form (`10.244.3.0/24`).
    pub subnet: Ipv4Network,
    /// Gateway address on the bridge (`10.244.3.1`).
    pub gateway: Ipv4Addr,
}

/// The IPv6 half of a dual-stack node's subnet file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Env {
    /// The whole IPv6 cluster network (`FLANNEL_IPV6_NETWORK`).
    pub network: Ipv6Network,
    /// The node's IPv6 subnet, network address form (`fd00:10:244:3::/64`).
    pub subnet: Ipv6Network,
    /// IPv6 gateway address on the bridge (`fd00:10:244:3::1`).
    pub gateway: Ipv6Addr,
}

/// Smallest subnet the plugin can allocate from, as host-local: a network address, the
/// gateway and at least one more (IPv4: and the broadcast address).
const MAX_PREFIX_V4: u8 = 30;
const MAX_PREFIX_V6: u8 = 126;

impl SubnetEnv {
    /// The file for `subnet` (any address inside it) of `network`: the gateway is the
    /// subnet's first host address.
    pub fn new(network: Ipv4Network, subnet: Ipv4Network, mtu: u32, ipmasq: bool) -> SubnetEnv {
        let base = subnet.network();
        SubnetEnv {
            ipv4: Some(Ipv4Env {
                network,
                subnet: Ipv4Network::new(base, subnet.prefix()).unwrap_or(subnet),
                gateway: Ipv4Addr::from(u32::from(base).wrapping_add(1)),
            }),
            mtu,
            ipmasq,
            ipv6: None,
        }
    }

    /// The file of an IPv6-only node: no IPv4 pair, `subnet` of the IPv6 `network`.
    pub fn ipv6_only(
        network: Ipv6Network,
        subnet: Ipv6Network,
        mtu: u32,
        ipmasq: bool,
    ) -> SubnetEnv {
        SubnetEnv {
            ipv4: None,
            mtu,
            ipmasq,
            ipv6: None,
        }
        .with_ipv6(network, subnet)
    }

    /// The same file for a dual-stack node: `subnet` (any address inside it) of the IPv6
    /// `network`, whose gateway is the subnet's first address + 1 (as for IPv4).
    pub fn with_ipv6(self, network: Ipv6Network, subnet: Ipv6Network) -> SubnetEnv {
        let base = subnet.network();
        SubnetEnv {
            ipv6: Some(Ipv6Env {
                network,
                subnet: Ipv6Network::new(base, subnet.prefix()).unwrap_or(subnet),
                gateway: Ipv6Addr::from(u128::from(base).wrapping_add(1)),
            }),
            ..self
        }
    }

    /// The file's text, in flannel's order.
    pub fn render(&self) -> String {
        let mut text = String::new();
        if let Some(v4) = &self.ipv4 {
            text.push_str(&format!(
                "FLANNEL_NETWORK={}\nFLANNEL_SUBNET={}/{}\n",
                v4.network,
                v4.gateway,
                v4.subnet.prefix()
            ));
        }
        if let Some(v6) = &self.ipv6 {
            text.push_str(&format!(
                "FLANNEL_IPV6_NETWORK={}\nFLANNEL_IPV6_SUBNET={}/{}\n",
                v6.network,
                v6.gateway,
                v6.subnet.prefix()
            ));
        }
        text.push_str(&format!(
            "FLANNEL_MTU={}\nFLANNEL_IPMASQ={}\n",
            self.mtu, self.ipmasq
        ));
        text
    }

    /// Parses the file's text; the error is a human-readable reason.
    pub fn parse(text: &str) -> std::result::Result<SubnetEnv, String> {
        let (mut network, mut subnet, mut mtu, mut ipmasq) = (None, None, None, None);
        let (mut network6, mut subnet6) = (None, None);
        for (no, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| format!("line {}: expected KEY=VALUE, got {line:?}", no + 1))?;
            let value = value.trim().trim_matches('"');
            let bad = |what: &str| format!("line {}: {key} is not {what}: {value:?}", no + 1);
            match key.trim() {
                "FLANNEL_NETWORK" => {
                    network = Some(
                        value
                            .parse::<Ipv4Network>()
                            .map_err(|_| bad("an IPv4 CIDR"))?,
                    );
                }
                "FLANNEL_SUBNET" => {
                    subnet = Some(
                        value
                            .parse::<Ipv4Network>()
                            .map_err(|_| bad("an IPv4 CIDR"))?,
                    );
                }
                "FLANNEL_IPV6_NETWORK" => {
                    network6 = Some(
                        value
                            .parse::<Ipv6Network>()
                            .map_err(|_| bad("an IPv6 CIDR"))?,
                    );
                }
                "FLANNEL_IPV6_SUBNET" => {
                    subnet6 = Some(
                        value
                            .parse::<Ipv6Network>()
                            .map_err(|_| bad("an IPv6 CIDR"))?,
                    );
                }
                "FLANNEL_MTU" => {
                    mtu = Some(
                        value
                            .parse::<u32>()
                            .ok()
                            .filter(|m| (576..=65535).contains(m))
                            .ok_or_else(|| bad("an MTU between 576 and 65535"))?,
                    );
                }
                "FLANNEL_IPMASQ" => {
                    ipmasq = Some(value.parse::<bool>().map_err(|_| bad("true or false"))?);
                }
                // Anything newer is not used yet.
                _ => {}
            }
        }
        let mtu = mtu.ok_or("FLANNEL_MTU missing")?;
        let ipv4 = match (network, subnet) {
            (Some(network), Some(with_gw)) => Some(parse_ipv4(network, with_gw)?),
            (None, None) if network6.is_some() || subnet6.is_some() => None,
            (None, None) => {
                return Err(
                    "FLANNEL_NETWORK missing (and no FLANNEL_IPV6_NETWORK: the file names no \
                     subnet)"
                        .into(),
                );
            }
            (Some(_), None) => return Err("FLANNEL_SUBNET missing".into()),
            (None, Some(_)) => {
                return Err("FLANNEL_NETWORK missing (FLANNEL_SUBNET given without it)".into());
            }
        };
        let ipv6 = match (network6, subnet6) {
            (None, None) => None,
            (Some(network), Some(with_gw)) => Some(parse_ipv6(network, with_gw)?),
            (Some(_), None) => {
                return Err("FLANNEL_IPV6_NETWORK given without FLANNEL_IPV6_SUBNET".into());
            }
            (None, Some(_)) => {
                return Err("FLANNEL_IPV6_SUBNET given without FLANNEL_IPV6_NETWORK".into());
            }
        };
        Ok(SubnetEnv {
            ipv4,
            mtu,
            ipmasq: ipmasq.unwrap_or(false),
            ipv6,
        })
    }

    /// Writes the file atomically: a temporary file in the same directory, fsync, rename. The
    /// directory is created if missing and must be one nobody else can change.
    pub fn write(&self, path: &Path) -> Result<()> {
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| Error::io("create", dir, e))?;
        crate::file_trust::check_dir(dir)?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "subnet.env".into());
        let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
        let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io("create", &tmp, e))?;
        f.write_all(self.render().as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| Error::io("write", &tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io("rename", path, e))
    }
}

/// The IPv4 pair's checks: `with_gw` is the gateway with the subnet's prefix, the subnet lies
/// inside `network` and leaves room for a container.
fn parse_ipv4(network: Ipv4Network, with_gw: Ipv4Network) -> std::result::Result<Ipv4Env, String> {
    if with_gw.prefix() > MAX_PREFIX_V4 {
        return Err(format!(
            "FLANNEL_SUBNET {with_gw} is too small (max /{MAX_PREFIX_V4})"
        ));
    }
    let subnet = Ipv4Network::new(with_gw.network(), with_gw.prefix())
        .map_err(|e| format!("FLANNEL_SUBNET {with_gw}: {e}"))?;
    let gateway = with_gw.ip();
    if gateway == subnet.network() || gateway == subnet.broadcast() {
        return Err(format!(
            "FLANNEL_SUBNET {with_gw} must name a host address (the gateway)"
        ));
    }
    if !network.contains(subnet.network()) || network.prefix() > subnet.prefix() {
        return Err(format!(
            "FLANNEL_SUBNET {with_gw} is outside FLANNEL_NETWORK {network}"
        ));
    }
    Ok(Ipv4Env {
        network,
        subnet,
        gateway,
    })
}

/// The IPv6 pair's checks, as `FLANNEL_SUBNET`'s: `with_gw` is the gateway with the subnet's
/// prefix, the subnet lies inside `network` and leaves room for a container.
fn parse_ipv6(network: Ipv6Network, with_gw: Ipv6Network) -> std::result::Result<Ipv6Env, String> {
    if with_gw.prefix() > MAX_PREFIX_V6 {
        return Err(format!(
            "FLANNEL_IPV6_SUBNET {with_gw} is too small (max /{MAX_PREFIX_V6})"
        ));
    }
    let subnet = Ipv6Network::new(with_gw.network(), with_gw.prefix())
        .map_err(|e| format!("FLANNEL_IPV6_SUBNET {with_gw}: {e}"))?;
    let gateway = with_gw.ip();
    if gateway == subnet.network() {
        return Err(format!(
            "FLANNEL_IPV6_SUBNET {with_gw} must name a host address (the gateway)"
        ));
    }
    if !network.contains(subnet.network()) || network.prefix() > subnet.prefix() {
        return Err(format!(
            "FLANNEL_IPV6_SUBNET {with_gw} is outside FLANNEL_IPV6_NETWORK {network}"
        ));
    }
    Ok(Ipv6Env {
        network,
        subnet,
        gateway,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";

    #[test]
    fn render_and_parse_agree() {
        let env = SubnetEnv::new(
            "10.244.0.0/16".parse().expect("literal"),
            "10.244.3.0/24".parse().expect("literal"),
            1450,
            true,
        );
        assert_eq!(
            env.ipv4.map(|v4| v4.gateway),
            Some(Ipv4Addr::new(10, 244, 3, 1))
        );
        assert_eq!(env.render(), FILE);
        assert_eq!(SubnetEnv::parse(FILE), Ok(env));
    }

    #[test]
    fn dual_stack_render_and_parse_agree() {
        let env = SubnetEnv::new(
            "10.244.0.0/16".parse().expect("literal"),
            "10.244.3.0/24".parse().expect("literal"),
            1430,
            false,
        )
        .with_ipv6(
            "fd00:10:244::/56".parse().expect("literal"),
            "fd00:10:244:3::/64".parse().expect("literal"),
        );
        let text = env.render();
        assert_eq!(
            text,
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\n\
             FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:3::1/64\n\
             FLANNEL_MTU=1430\nFLANNEL_IPMASQ=false\n"
        );
        assert_eq!(SubnetEnv::parse(&text), Ok(env.clone()));
        let v6 = env.ipv6.expect("dual-stack");
        assert_eq!(
            v6.gateway,
            "fd00:10:244:3::1".parse::<Ipv6Addr>().expect("literal")
        );
        // Any address of the subnet names it; the file holds its network-address form.
        let v4 = env.ipv4.expect("dual-stack");
        let same = SubnetEnv::new(v4.network, v4.subnet, 1430, false)
            .with_ipv6(v6.network, "fd00:10:244:3::99/64".parse().expect("literal"));
        assert_eq!(same, env);
        // The smallest IPv6 subnet there is room in: gateway and one container.
        let tiny = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\n\
             FLANNEL_IPV6_NETWORK=fd00::/56\nFLANNEL_IPV6_SUBNET=fd00::1/126\nFLANNEL_MTU=1450\n";
        assert!(SubnetEnv::parse(tiny).is_ok_and(|e| e.ipv6.is_some()));
        let base =
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1450\n";
        for (v6, why) in [
            (
                "FLANNEL_IPV6_NETWORK=fd00::/56\n",
                "without FLANNEL_IPV6_SUBNET",
            ),
            (
                "FLANNEL_IPV6_SUBNET=fd00::1/64\n",
                "without FLANNEL_IPV6_NETWORK",
            ),
            (
                "FLANNEL_IPV6_NETWORK=fd00::/56\nFLANNEL_IPV6_SUBNET=fd01::1/64\n",
                "outside",
            ),
            (
                "FLANNEL_IPV6_NETWORK=fd00::/56\nFLANNEL_IPV6_SUBNET=fd00::/64\n",
                "gateway",
            ),
            (
                "FLANNEL_IPV6_NETWORK=fd00::/56\nFLANNEL_IPV6_SUBNET=10.0.0.1/24\n",
                "IPv6 CIDR",
            ),
            (
                "FLANNEL_IPV6_NETWORK=fd00::/56\nFLANNEL_IPV6_SUBNET=fd00::1/127\n",
                "too small",
            ),
            (
                "FLANNEL_IPV6_NETWORK=fd00:0:0:1::/64\nFLANNEL_IPV6_SUBNET=fd00::1/56\n",
                "outside",
            ),
        ] {
            let e = SubnetEnv::parse(&format!("{base}{v6}")).expect_err(v6);
            assert!(e.contains(why), "{v6}: {e}");
        }
    }

    #[test]
    fn ipv6_only_render_and_parse_agree() {
        let env = SubnetEnv::ipv6_only(
            "fd00:10:244::/56".parse().expect("literal"),
            "fd00:10:244:3::/64".parse().expect("literal"),
            1430,
            true,
        );
        let text = env.render();
        // flannel's WriteSubnetFile without EnableIPv4: no FLANNEL_NETWORK, no FLANNEL_SUBNET.
        assert_eq!(
            text,
            "FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:3::1/64\n\
             FLANNEL_MTU=1430\nFLANNEL_IPMASQ=true\n"
        );
        let back = SubnetEnv::parse(&text).expect("parses");
        assert_eq!(back, env);
        assert_eq!(back.ipv4, None);
        for (text, why) in [
            ("FLANNEL_MTU=1450\n", "names no subnet"),
            (
                "FLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_IPV6_NETWORK=fd00::/56\n\
                 FLANNEL_IPV6_SUBNET=fd00::1/64\nFLANNEL_MTU=1450\n",
                "FLANNEL_NETWORK missing",
            ),
            (
                "FLANNEL_IPV6_NETWORK=fd00::/56\nFLANNEL_MTU=1450\n",
                "without FLANNEL_IPV6_SUBNET",
            ),
        ] {
            let e = SubnetEnv::parse(text).expect_err(text);
            assert!(e.contains(why), "{text:?}: {e}");
        }
    }

    #[test]
    fn rejects_garbage() {
        for text in [
            "",
            "garbage",
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=banana\nFLANNEL_MTU=1450",
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=-3",
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.9.3.1/24\nFLANNEL_MTU=1450",
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.0/24\nFLANNEL_MTU=1450",
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24",
        ] {
            assert!(SubnetEnv::parse(text).is_err(), "{text:?}");
        }
    }

    #[test]
    fn bad_files_say_why() {
        for (text, why) in [
            (
                "FLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1450\n",
                "FLANNEL_NETWORK missing",
            ),
            (
                "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.0/24\nFLANNEL_MTU=1450\n",
                "gateway",
            ),
            (
                "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.9.3.1/24\nFLANNEL_MTU=1450\n",
                "outside",
            ),
            (
                "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=9\n",
                "MTU",
            ),
            ("garbage\n", "KEY=VALUE"),
        ] {
            let e = SubnetEnv::parse(text).expect_err(text);
            assert!(e.contains(why), "{text:?}: {e}");
        }
    }

    #[test]
    fn written_atomically_into_a_trusted_directory() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let path = tmp.path().join("run/flannel/subnet.env");
        let env = SubnetEnv::parse(FILE).expect("parses");
        env.write(&path).expect("write");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), FILE);
        let dir = path.parent().expect("dir");
        assert_eq!(
            std::fs::read_dir(dir).expect("list").count(),
            1,
            "no temp file left"
        );
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        assert!(matches!(env.write(&path), Err(Error::Untrusted { .. })));
    }
}
