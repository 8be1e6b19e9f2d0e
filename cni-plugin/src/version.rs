//! CNI spec versions this plugin speaks, and which commands each version allows.

use crate::error::{CniError, Result};

/// A CNI spec version accepted in network configs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CniVersion {
    V030,
    V031,
    V040,
    V100,
    V110,
}

/// Versions reported by VERSION, oldest first.
pub const SUPPORTED: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

impl CniVersion {
    /// The newest version, used when no config version is known (e.g. an empty VERSION request).
    pub const LATEST: CniVersion = CniVersion::V110;

    /// Parse a `cniVersion` string; unknown versions are error code 1.
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "0.3.0" => CniVersion::V030,
            "0.3.1" => CniVersion::V031,
            "0.4.0" => CniVersion::V040,
            "1.0.0" => CniVersion::V100,
            "1.1.0" => CniVersion::V110,
            other => return Err(CniError::IncompatibleVersion(other.to_string())),
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CniVersion::V030 => "0.3.0",
            CniVersion::V031 => "0.3.1",
            CniVersion::V040 => "0.4.0",
            CniVersion::V100 => "1.0.0",
            CniVersion::V110 => "1.1.0",
        }
    }

    /// Results before 1.0.0 carry `"version": "4"` in each `ips` entry.
    pub fn ips_carry_version(self) -> bool {
        self < CniVersion::V100
    }

    /// CHECK exists since 0.4.0.
    pub fn has_check(self) -> bool {
        self >= CniVersion::V040
    }

    /// GC and STATUS exist since 1.1.0; so do the extra interface fields (`mtu`).
    pub fn has_gc_status(self) -> bool {
        self >= CniVersion::V110
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_supported_version_and_rejects_others() {
        for v in SUPPORTED {
            assert_eq!(CniVersion::parse(v).map(CniVersion::as_str).ok(), Some(v));
        }
        for bad in ["0.2.0", "1.2.0", "", "1.0"] {
            assert!(matches!(
                CniVersion::parse(bad),
                Err(CniError::IncompatibleVersion(_))
            ));
        }
    }

    #[test]
    fn command_availability_follows_the_spec() {
        assert!(!CniVersion::V031.has_check());
        assert!(CniVersion::V040.has_check());
        assert!(!CniVersion::V100.has_gc_status());
        assert!(CniVersion::V110.has_gc_status());
        assert!(CniVersion::V040.ips_carry_version());
        assert!(!CniVersion::V100.ips_carry_version());
    }
}
