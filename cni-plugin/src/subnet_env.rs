//! The node's subnet as netd wrote it: the file is [`hostnet::subnet_env`]'s contract (shared
//! with netd); the plugin loads it on every ADD, refusing a file others could have written.

pub use hostnet::subnet_env::SubnetEnv;

use crate::error::{CniError, Result};

/// Reads and parses the file; a missing or unreadable file is "try again later". A file
/// other users could have written is refused ([`crate::file_trust`]).
pub fn load(path: &str) -> Result<SubnetEnv> {
    crate::file_trust::check_file(std::path::Path::new(path))?;
    let text = std::fs::read_to_string(path).map_err(|e| CniError::SubnetFileMissing {
        path: path.to_string(),
        reason: e.to_string(),
    })?;
    SubnetEnv::parse(&text).map_err(|reason| CniError::SubnetFileInvalid {
        path: path.to_string(),
        reason,
    })
}
