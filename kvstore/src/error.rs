//! The crate's one error type, and the single place where it becomes a gRPC status
//! carrying etcd's code and exact message (clients match on the message text).

use tonic::{Code, Status};

/// Everything that can go wrong serving a request or running the store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRevision,
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    #[error("etcdserver: key not found")]
    KeyNotFound,
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    /// An active NOSPACE alarm refuses what would grow the store (see `alarm`).
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    /// An active CORRUPT alarm refuses every write (see `alarm`).
    #[error("etcdserver: corrupt cluster")]
    CorruptCluster,
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    #[error("etcdserver: no leader")]
    NoLeader,
    #[error("etcdserver: request timed out")]
    Timeout,
    /// A request that started shortly before the current leader was elected timed out: its
    /// proposal was most likely lost with the previous leader (etcd's `parseProposeCtxErr`).
    #[error("etcdserver: request timed out, possibly due to previous leader failure")]
    TimeoutDueToLeaderFail,
    /// A proposal that never reached raft (no leader was known) before its request timed
    /// out: etcd 3.4 answers it with Go's context error, which its gRPC layer passes on
    /// unmapped (code Unknown).
    #[error("context deadline exceeded")]
    DeadlineExceeded,
    #[error("etcdserver: leader changed")]
    LeaderChanged,
    #[error("etcdserver: not leader")]
    NotLeader,
    #[error("etcdserver: bad leader transferee")]
    BadLeaderTransferee,
    #[error("etcdserver: request timed out, leader transfer took too long")]
    LeaderTransferTimeout,
    #[error("etcdserver: server stopped")]
    Stopped,
    #[error("etcdserver: member ID already exist")]
    MemberExists,
    #[error("etcdserver: member not found")]
    MemberNotFound,
    #[error("etcdserver: can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    #[error("etcdserver: can only promote a learner member")]
    MemberNotLearner,
    #[error("etcdserver: too many learner members in cluster")]
    TooManyLearners,
    /// What a learner answers to every RPC but Status and serializable Range.
    #[error("etcdserver: rpc not supported for learner")]
    NotSupportedForLearner,
    #[error("etcdserver: given member URLs are invalid")]
    BadPeerUrls,
    #[error("etcdserver: Peer URLs already exists")]
    PeerUrlExists,
    /// A membership change would leave fewer started members than a quorum
    /// (`--strict-reconfig-check`).
    #[error("etcdserver: re-configuration failed due to not enough started members")]
    UnhealthyCluster,
    /// A membership change would break the quorum of members the leader hears from
    /// (`--strict-reconfig-check`).
    #[error("etcdserver: unhealthy cluster")]
    Unhealthy,
    // Authentication and permissions (etcd's `auth` errors as its gRPC layer words them).
    #[error("etcdserver: root user does not exist")]
    RootUserNotExist,
    #[error("etcdserver: root user does not have root role")]
    RootRoleNotExist,
    #[error("etcdserver: user name already exists")]
    UserAlreadyExist,
    #[error("etcdserver: user name is empty")]
    UserEmpty,
    #[error("etcdserver: user name not found")]
    UserNotFound,
    #[error("etcdserver: role name already exists")]
    RoleAlreadyExist,
    #[error("etcdserver: role name not found")]
    RoleNotFound,
    #[error("etcdserver: role name is empty")]
    RoleEmpty,
    #[error("etcdserver: authentication failed, invalid user ID or password")]
    AuthFailed,
    /// etcd 3.4 has no gRPC mapping for this one: its clients see Unknown with the auth text.
    #[error("auth: authentication failed, password was given for no password user")]
    NoPasswordUser,
    #[error("etcdserver: permission not given")]
    PermissionNotGiven,
    #[error("etcdserver: permission denied")]
    PermissionDenied,
    #[error("etcdserver: role is not granted to the user")]
    RoleNotGranted,
    #[error("etcdserver: permission is not granted to the role")]
    PermissionNotGranted,
    #[error("etcdserver: authentication is not enabled")]
    AuthNotEnabled,
    #[error("etcdserver: invalid auth token")]
    InvalidAuthToken,
    #[error("etcdserver: invalid auth management")]
    InvalidAuthMgmt,
    #[error("etcdserver: revision of auth store is old")]
    AuthOldRevision,
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    Unimplemented(&'static str),
    #[error("storage: {0}")]
    Storage(#[from] sled::Error),
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    #[error("corrupt record: {0}")]
    Corrupt(String),
    #[error("configuration: {0}")]
    Config(String),
    /// The initial corruption check found this member's keyspace different from a peer's at
    /// the same revision and compaction: etcd's message, the member id in hex (`corrupt`).
    #[error("{0:x} found data inconsistency with peers")]
    DataInconsistency(u64),
    /// A listen URL could not be bound (the port is taken, the address is not this host's).
    #[error("cannot listen on {url}: {source}")]
    Listen {
        url: String,
        #[source]
        source: std::io::Error,
    },
    /// Serving clients or peers failed (a listener's task, the gRPC server).
    #[error("serving: {0}")]
    Serve(String),
    /// Stopping failed (the raft thread's final writes, a task that would not end).
    #[error("shutdown: {0}")]
    Shutdown(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The gRPC code etcd answers this error with (`rpctypes/error.go`).
    pub fn code(&self) -> Code {
        match self {
            Error::Compacted | Error::FutureRevision | Error::LeaseTtlTooLarge => Code::OutOfRange,
            Error::EmptyKey
            | Error::KeyNotFound
            | Error::TooManyOps
            | Error::DuplicateKey
            | Error::RequestTooLarge
            | Error::InvalidArgument(_)
            | Error::BadPeerUrls
            | Error::UserEmpty
            | Error::RoleEmpty
            | Error::AuthFailed
            | Error::PermissionNotGiven
            | Error::InvalidAuthMgmt
            | Error::AuthOldRevision => Code::InvalidArgument,
            Error::RootUserNotExist
            | Error::RootRoleNotExist
            | Error::UserAlreadyExist
            | Error::UserNotFound
            | Error::RoleAlreadyExist
            | Error::RoleNotFound
            | Error::RoleNotGranted
            | Error::PermissionNotGranted
            | Error::AuthNotEnabled => Code::FailedPrecondition,
            Error::PermissionDenied => Code::PermissionDenied,
            Error::InvalidAuthToken => Code::Unauthenticated,
            Error::LeaseNotFound | Error::MemberNotFound => Code::NotFound,
            Error::LeaseExists
            | Error::MemberExists
            | Error::PeerUrlExists
            | Error::NotLeader
            | Error::BadLeaderTransferee
            | Error::LearnerNotReady
            | Error::MemberNotLearner
            | Error::TooManyLearners => Code::FailedPrecondition,
            // etcd 3.4 maps no code to this one: its clients see Unknown.
            Error::UnhealthyCluster | Error::NoPasswordUser | Error::DeadlineExceeded => {
                Code::Unknown
            }
            Error::NoLeader
            | Error::Timeout
            | Error::TimeoutDueToLeaderFail
            | Error::LeaderChanged
            | Error::LeaderTransferTimeout
            | Error::Stopped
            | Error::Unhealthy
            | Error::NotSupportedForLearner => Code::Unavailable,
            Error::Unimplemented(_) => Code::Unimplemented,
            Error::NoSpace => Code::ResourceExhausted,
            Error::CorruptCluster => Code::DataLoss,
            Error::Storage(_)
            | Error::Raft(_)
            | Error::Corrupt(_)
            | Error::Config(_)
            | Error::DataInconsistency(_)
            | Error::Listen { .. }
            | Error::Serve(_)
            | Error::Shutdown(_)
            | Error::Io(_) => Code::Internal,
        }
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        Status::new(e.code(), e.to_string())
    }
}

impl From<prost::DecodeError> for Error {
    fn from(e: prost::DecodeError) -> Self {
        Error::Corrupt(e.to_string())
    }
}

impl From<protobuf::ProtobufError> for Error {
    fn from(e: protobuf::ProtobufError) -> Self {
        Error::Corrupt(e.to_string())
    }
}
