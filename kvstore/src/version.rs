//! The versions a member reports, in one place: which etcd it answers as, and its own.
//!
//! - [`ETCD_SERVER`] is what etcd puts in `Status.version` (`etcdctl endpoint status`) and in
//!   `etcdserver` of `/version`: its release. kvstore reports the etcd release whose API and
//!   behaviour it follows and is tested against (the reference etcd the integration tests run
//!   beside it), so clients that read a version from it (clientv3 compares major.minor;
//!   others parse `x.y.z`) see an etcd 3.4 they know how to talk to.
//! - [`ETCD_CLUSTER`] is etcd's cluster version (`etcdcluster` of `/version`): the API level
//!   every member speaks, major.minor with patch 0.
//! - [`KVSTORE`] is kvstore's own release, where etcd's answers have room for it: an extra
//!   `kvstore` field in `/version` (decoders of etcd's two fields ignore it) and the
//!   `kvstore_server_version` gauge's label in `/metrics`.

/// The etcd release kvstore answers as (`Status.version`, `/version`'s `etcdserver`).
pub const ETCD_SERVER: &str = "3.4.23";
/// The etcd cluster API level (`/version`'s `etcdcluster`).
pub const ETCD_CLUSTER: &str = "3.4.0";
/// kvstore's own version.
pub const KVSTORE: &str = env!("CARGO_PKG_VERSION");

/// The body of `/version`: etcd's JSON, plus kvstore's own version.
pub fn json() -> String {
    format!(
        r#"{{"etcdserver":"{ETCD_SERVER}","etcdcluster":"{ETCD_CLUSTER}","kvstore":"{KVSTORE}"}}"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_as_etcd_clients_parse_them() {
        // clientv3 splits on '.' and reads major and minor; semver parsers want three numbers.
        for v in [ETCD_SERVER, ETCD_CLUSTER] {
            let parts: Vec<u64> = v.split('.').map(|p| p.parse().expect("number")).collect();
            assert_eq!(parts.len(), 3, "{v}");
            assert_eq!(&parts[..2], &[3, 4], "{v}");
        }
        assert!(ETCD_CLUSTER.ends_with(".0"));
        assert_eq!(
            json(),
            format!(r#"{{"etcdserver":"3.4.23","etcdcluster":"3.4.0","kvstore":"{KVSTORE}"}}"#)
        );
    }
}
