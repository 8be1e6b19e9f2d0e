//! Entry points for the fuzz targets in `fuzz/` (cargo-fuzz): each takes arbitrary bytes, runs
//! one parser that input from the KV store, the disk or a user reaches, and must return
//! without panicking. Not an API: hidden from the documentation.

use crate::netconf::{NetworkConfig, warnings};
use crate::subnet::parse_record;

/// The network config an operator writes (`<prefix>/config`, or `--net-config @FILE`), then
/// a subnet record from the KV store checked against it: the input's first line is the
/// record's key suffix, the rest its value.
pub fn network_config_and_record(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (config_text, record) = text.split_once('\u{0}').unwrap_or((text, ""));
    let _ = warnings(config_text);
    let config = NetworkConfig::parse(config_text).unwrap_or_else(|_| {
        NetworkConfig::parse(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#)
            .expect("the default config parses")
    });
    let _ = config.ipv4.as_ref().map(|c| c.subnet_count());
    let _ = config.ipv6.as_ref().map(|c| c.subnet_count());
    let (key, value) = record.split_once('\n').unwrap_or((record, ""));
    let _ = parse_record(&config, key, value.as_bytes(), 1, 1, 1);
}

/// The subnet file of a previous run, read back at start-up.
pub fn subnet_env(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::subnet_file::parse_subnet(text);
    }
}
