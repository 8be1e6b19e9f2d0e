//! kvstore: a Raft-replicated MVCC key-value store serving the etcd v3 API.
