//! kvstore's integration tests, one binary (one link for all of them). Each module is one area,
//! most run the same test code against kvstore and the reference etcd 3.4 (`common`: server
//! processes, clusters, namespaces through `testbed`).

mod common;

mod alarm;
mod auth;
mod auto_compaction;
mod backup;
mod checkers;
mod client;
mod cluster;
mod corruption;
mod defrag;
mod disk;
mod disk_full;
mod durability;
mod elections;
mod errors;
mod etcdctl;
mod failpoints;
mod gateway;
mod hostile_http2;
mod http;
mod learner;
mod linearizability;
mod member_update;
mod metrics;
mod partition;
mod peer_tls;
mod quota;
mod reconfig;
mod resend;
mod robustness;
mod tls;
mod watch;
mod watch_load;
