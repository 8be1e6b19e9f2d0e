//! The gateway's paths, as etcd 3.4's `rpc.proto` binds them (`post: "/v3/…"`, body `*`):
//! each names the gRPC method it calls. Whether a method streams, and its message types, come
//! from the compiled `.proto` ([`super::json::method`]); a method the `.proto` does not declare
//! answers Unimplemented as grpc-go does for it. `/v3beta/` is the same table (etcd 3.4
//! rewrites it to `/v3/`).

/// One path of the gateway.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Route {
    /// The path after `/v3/`.
    pub path: &'static str,
    /// The gRPC service, with its package.
    pub service: &'static str,
    pub method: &'static str,
    /// The request stream stays open after the HTTP request body ends: etcd's Watch keeps a
    /// stream whose client closed its sending side, so `curl -d '{"create_request":…}'`
    /// watches until the connection closes.
    pub hold_open: bool,
}

const fn r(path: &'static str, service: &'static str, method: &'static str) -> Route {
    Route {
        path,
        service,
        method,
        hold_open: false,
    }
}

const KV: &str = "etcdserverpb.KV";
const LEASE: &str = "etcdserverpb.Lease";
const CLUSTER: &str = "etcdserverpb.Cluster";
const MAINTENANCE: &str = "etcdserverpb.Maintenance";
const AUTH: &str = "etcdserverpb.Auth";

/// Every path; the first that matches wins (etcd's `/v3/maintenance/hash` is bound to both
/// Hash and HashKV, and grpc-gateway serves the first, Hash).
pub(crate) const ROUTES: &[Route] = &[
    r("kv/range", KV, "Range"),
    r("kv/put", KV, "Put"),
    r("kv/deleterange", KV, "DeleteRange"),
    r("kv/txn", KV, "Txn"),
    r("kv/compaction", KV, "Compact"),
    Route {
        path: "watch",
        service: "etcdserverpb.Watch",
        method: "Watch",
        hold_open: true,
    },
    r("lease/grant", LEASE, "LeaseGrant"),
    r("lease/revoke", LEASE, "LeaseRevoke"),
    r("kv/lease/revoke", LEASE, "LeaseRevoke"),
    r("lease/keepalive", LEASE, "LeaseKeepAlive"),
    r("lease/timetolive", LEASE, "LeaseTimeToLive"),
    r("kv/lease/timetolive", LEASE, "LeaseTimeToLive"),
    r("lease/leases", LEASE, "LeaseLeases"),
    r("kv/lease/leases", LEASE, "LeaseLeases"),
    r("cluster/member/add", CLUSTER, "MemberAdd"),
    r("cluster/member/remove", CLUSTER, "MemberRemove"),
    r("cluster/member/update", CLUSTER, "MemberUpdate"),
    r("cluster/member/list", CLUSTER, "MemberList"),
    r("cluster/member/promote", CLUSTER, "MemberPromote"),
    r("maintenance/alarm", MAINTENANCE, "Alarm"),
    r("maintenance/status", MAINTENANCE, "Status"),
    r("maintenance/defragment", MAINTENANCE, "Defragment"),
    r("maintenance/hash", MAINTENANCE, "Hash"),
    r("maintenance/snapshot", MAINTENANCE, "Snapshot"),
    r("maintenance/transfer-leadership", MAINTENANCE, "MoveLeader"),
    r("auth/enable", AUTH, "AuthEnable"),
    r("auth/disable", AUTH, "AuthDisable"),
    r("auth/authenticate", AUTH, "Authenticate"),
    r("auth/user/add", AUTH, "UserAdd"),
    r("auth/user/get", AUTH, "UserGet"),
    r("auth/user/list", AUTH, "UserList"),
    r("auth/user/delete", AUTH, "UserDelete"),
    r("auth/user/changepw", AUTH, "UserChangePassword"),
    r("auth/user/grant", AUTH, "UserGrantRole"),
    r("auth/user/revoke", AUTH, "UserRevokeRole"),
    r("auth/role/add", AUTH, "RoleAdd"),
    r("auth/role/get", AUTH, "RoleGet"),
    r("auth/role/list", AUTH, "RoleList"),
    r("auth/role/delete", AUTH, "RoleDelete"),
    r("auth/role/grant", AUTH, "RoleGrantPermission"),
    r("auth/role/revoke", AUTH, "RoleRevokePermission"),
    // etcd's concurrency services, which kvstore does not serve: Unimplemented.
    r("lock/lock", "v3lockpb.Lock", "Lock"),
    r("lock/unlock", "v3lockpb.Lock", "Unlock"),
    r("election/campaign", "v3electionpb.Election", "Campaign"),
    r("election/proclaim", "v3electionpb.Election", "Proclaim"),
    r("election/leader", "v3electionpb.Election", "Leader"),
    r("election/observe", "v3electionpb.Election", "Observe"),
    r("election/resign", "v3electionpb.Election", "Resign"),
];

/// The route of `path` (what follows `/v3/`).
pub(crate) fn find(path: &str) -> Option<Route> {
    ROUTES.iter().find(|r| r.path == path).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn served_methods_are_declared() {
        // Every route to a service kvstore serves names a method its `.proto` declares.
        for r in ROUTES {
            let served = ["KV", "Watch", "Lease", "Cluster"]
                .iter()
                .any(|s| r.service == format!("etcdserverpb.{s}"));
            if served {
                assert!(
                    super::super::json::method(r.service, r.method).is_some(),
                    "{}",
                    r.path
                );
            }
        }
        assert_eq!(find("maintenance/hash").map(|r| r.method), Some("Hash"));
    }
}
