//! VERSION: the versions this plugin speaks. Answers with any environment (podman sends
//! `dummy` values) and with an empty or partial stdin.

use serde_json::{Value, json};

use crate::config::peek_version;
use crate::version::{CniVersion, SUPPORTED};

pub fn run(stdin: &[u8]) -> Value {
    let asked = peek_version(stdin)
        .and_then(|v| CniVersion::parse(&v).ok())
        .unwrap_or(CniVersion::LATEST);
    json!({ "cniVersion": asked.as_str(), "supportedVersions": SUPPORTED })
}
