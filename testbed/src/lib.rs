//! The one test world of the netd project, used by every crate's tests, the benchmarks and the
//! demo: network namespaces named by one scheme, an underlay bridge with hosts on it, containers,
//! the reference etcd, the real binaries found by path, and teardown on drop. It depends on no
//! crate of the system under test (only [`hostnet`]), so kvstore's and netd's own tests can use
//! it as a dev-dependency.
//!
//! - [`lab`]: the naming scheme (`tb<pid>x<n>-<tag>`), the sweep of namespaces left by crashed
//!   runs, and [`lab::Lab`]: the namespaces and processes of one world, removed on drop; the
//!   underlay bridge (192.0.2.254/24) and hosts on it (192.0.2.i/24).
//! - [`etcd`]: the reference etcd 3.4 (one member or a cluster) in a namespace.
//! - [`world`]: hosts each running the real `netd` (the first ones with an embedded KV member),
//!   containers attached through `netd-cni`.
//! - [`cni`]: invoking `netd-cni` exactly as a container runtime does.
//! - [`containerd`]: containerd per host (CRI plugin on, the test's CNI directories), in the
//!   host's namespace and a private mount namespace; `ctr` inside them.
//! - [`cri`]: a client of the Kubernetes CRI (v1) over containerd's socket, what a kubelet calls.
//! - [`oci`]: container images without a registry (busybox-static as an OCI image archive).
//! - [`traffic`]: verified TCP traffic between namespaces (echo, long-lived paced stream).
//! - [`netns`]: creating, deleting and entering named network namespaces; a probe from one.
//! - [`probe`]: an ICMP echo written in Rust (no `ping` binary needed).
//! - [`binaries`]: building and finding the `netd` and `netd-cni` binaries.
//! - [`cmd`]: running external tools with their stderr in the error; waiting for a condition.

pub mod binaries;
pub mod cmd;
pub mod cni;
pub mod containerd;
pub mod cri;
pub mod etcd;
pub mod lab;
pub mod netns;
pub mod oci;
pub mod probe;
pub mod traffic;
pub mod world;
