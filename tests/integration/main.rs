//! The end-to-end tests, one binary (one link for all of them): multi-host worlds from
//! `testbed` running the real `netd` and `netd-cni` (podman, containerd, and the demo itself).

mod containerd;
mod demo;
mod deploy_manifests;
mod e2e_dual_stack;
mod e2e_ipv6_only;
mod e2e_kv_cluster;
mod e2e_membership;
mod e2e_paths;
mod e2e_restart;
mod podman;
