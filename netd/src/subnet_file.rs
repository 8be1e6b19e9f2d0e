//! `subnet.env`: the file the CNI plugin reads (flannel's format), written atomically into a
//! directory only root (or netd's user) can change, and read back only when nobody else could
//! have written it ([`crate::file_trust`]).

use std::io::Write;
use std::path::Path;

use ipnetwork::Ipv4Network;

use crate::error::{Error, Result};
use crate::subnet::Subnet;

/// Contents of `subnet.env`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetEnv {
    pub network: Ipv4Network,
    pub subnet: Subnet,
    pub mtu: u32,
    pub ip_masq: bool,
}

impl SubnetEnv {
    /// The file text: `FLANNEL_SUBNET` is the gateway address with the subnet's prefix.
    pub fn render(&self) -> String {
        format!(
            "FLANNEL_NETWORK={}\nFLANNEL_SUBNET={}/{}\nFLANNEL_MTU={}\nFLANNEL_IPMASQ={}\n",
            self.network,
            self.subnet.gateway(),
            self.subnet.prefix(),
            self.mtu,
            self.ip_masq
        )
    }
}

/// Writes the file atomically: a temporary file in the same directory, fsync, rename.
pub fn write(path: &Path, env: &SubnetEnv) -> Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::file(dir, e))?;
    crate::file_trust::check_dir(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "subnet.env".into());
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp).map_err(|e| Error::file(&tmp, e))?;
    f.write_all(env.render().as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::file(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::file(path, e))
}

/// The subnet recorded by a previous run (`FLANNEL_SUBNET`), if the file exists and parses.
/// A file others could have written is an error, not a hint.
pub fn read_previous_subnet(path: &Path) -> Result<Option<Subnet>> {
    if !crate::file_trust::check_file(path)? {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::file(path, e))?;
    Ok(parse_subnet(&text))
}

pub(crate) fn parse_subnet(text: &str) -> Option<Subnet> {
    let value = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("FLANNEL_SUBNET="))?;
    let net: Ipv4Network = value.trim().parse().ok()?;
    Subnet::new(net.network(), net.prefix()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/flannel/subnet.env");
        let env = SubnetEnv {
            network: "10.244.0.0/16".parse().unwrap(),
            subnet: Subnet::from_key("10.244.3.0-24").unwrap(),
            mtu: 1450,
            ip_masq: true,
        };
        write(&path, &env).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
        );
        assert_eq!(read_previous_subnet(&path).unwrap(), Some(env.subnet));
        assert_eq!(
            read_previous_subnet(&dir.path().join("missing")).unwrap(),
            None
        );
        assert_eq!(parse_subnet("FLANNEL_SUBNET=garbage\n"), None);
        // No temporary file left behind.
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1
        );
    }
}
