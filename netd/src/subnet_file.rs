//! `subnet.env` on netd's side: the file is [`hostnet::subnet_env`]'s contract (shared with
//! netd-cni); netd writes it once it holds a lease, and reads back the subnet of a previous run
//! only when nobody else could have written the file ([`crate::file_trust`]).

use std::path::Path;

pub use hostnet::subnet_env::SubnetEnv;

use crate::error::{Error, Result};
use crate::subnet::{Subnet, Subnet6, SubnetKey};

/// The subnets recorded by a previous run (`FLANNEL_SUBNET` and/or `FLANNEL_IPV6_SUBNET`), if the file exists and parses. A file others could have written is an
/// error, not a hint.
pub fn read_previous_subnet(path: &Path) -> Result<Option<SubnetKey>> {
    if !crate::file_trust::check_file(path)? {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::file(path, e))?;
    Ok(parse_subnet(&text))
}

pub(crate) fn parse_subnet(text: &str) -> Option<SubnetKey> {
    let env = SubnetEnv::parse(text).ok()?;
    let v4 = match &env.ipv4 {
        Some(v4) => Some(Subnet::new(v4.subnet.network(), v4.subnet.prefix()).ok()?),
        None => None,
    };
    let v6 = match &env.ipv6 {
        Some(v6) => Some(Subnet6::new(v6.subnet.network(), v6.subnet.prefix()).ok()?),
        None => None,
    };
    Some(SubnetKey { v4, v6 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/flannel/subnet.env");
        let subnet = SubnetKey::from_key("10.244.3.0-24").unwrap();
        let env = SubnetEnv::new(
            "10.244.0.0/16".parse().unwrap(),
            subnet.v4.unwrap().0,
            1450,
            true,
        );
        env.write(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
        );
        assert_eq!(read_previous_subnet(&path).unwrap(), Some(subnet));
        assert_eq!(
            read_previous_subnet(&dir.path().join("missing")).unwrap(),
            None
        );
        assert_eq!(parse_subnet("FLANNEL_SUBNET=garbage\n"), None);
        // Dual-stack: both subnets come back.
        let dual = SubnetKey::from_key("10.244.3.0-24&fd00:10:244:3::-64").unwrap();
        let env = SubnetEnv::new(
            "10.244.0.0/16".parse().unwrap(),
            dual.v4.unwrap().0,
            1430,
            false,
        )
        .with_ipv6("fd00:10:244::/56".parse().unwrap(), dual.v6.unwrap().0);
        env.write(&path).unwrap();
        assert_eq!(read_previous_subnet(&path).unwrap(), Some(dual));
        // IPv6-only: the IPv6 subnet alone.
        let v6only = SubnetKey::from_key("0.0.0.0-0&fd00:10:244:3::-64").unwrap();
        let env = SubnetEnv::ipv6_only(
            "fd00:10:244::/56".parse().unwrap(),
            v6only.v6.unwrap().0,
            1430,
            false,
        );
        env.write(&path).unwrap();
        assert_eq!(read_previous_subnet(&path).unwrap(), Some(v6only));
    }
}
