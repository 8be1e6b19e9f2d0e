//! netd's integration tests, one binary (one link for all of them). Each module is one area;
//! most build a world of network namespaces (`common`, on top of `testbed`) with a real etcd
//! or the embedded member and the real `netd` binary on each host.

mod common;

mod auth;
mod bad_input;
mod embedded;
mod embedded_cluster;
mod file_trust;
mod flanneld_unit;
mod kv_lease;
mod leases;
mod masq_tables;
mod mixed_flannel;
mod netlink;
mod resilience;
mod routing;
mod scale;
mod tls;
mod vxlan;
