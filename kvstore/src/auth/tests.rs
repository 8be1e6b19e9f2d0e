//! The auth store's refusals and checks, as etcd 3.4's auth store answers them.

use super::*;
use crate::proto::authpb::permission;
use crate::proto::etcdserverpb::{
    AuthDisableRequest, AuthEnableRequest, AuthRoleAddRequest, AuthRoleDeleteRequest,
    AuthUserDeleteRequest, AuthUserGrantRoleRequest, AuthUserRevokeRoleRequest, Compare,
    DeleteRangeRequest, PutRequest, RangeRequest,
};
use crate::proto::kvstorepb::InternalAuthenticateRequest;

fn user_add(name: &str) -> Request {
    Request::UserAdd(AuthUserAddRequest {
        name: name.into(),
        hashed_password: "$2b$04$notarealhashbutstoredasis".into(),
        ..Default::default()
    })
}

fn grant_role(user: &str, role: &str) -> Request {
    Request::UserGrantRole(AuthUserGrantRoleRequest {
        user: user.into(),
        role: role.into(),
    })
}

fn role_add(name: &str) -> Request {
    Request::RoleAdd(AuthRoleAddRequest { name: name.into() })
}

fn grant(role: &str, t: permission::Type, key: &str, end: &str) -> Request {
    Request::RoleGrantPermission(AuthRoleGrantPermissionRequest {
        name: role.into(),
        perm: Some(Permission {
            perm_type: t as i32,
            key: key.as_bytes().to_vec().into(),
            range_end: end.as_bytes().to_vec().into(),
        }),
    })
}

fn put(key: &str) -> Request {
    Request::Put(PutRequest {
        key: key.as_bytes().to_vec().into(),
        ..Default::default()
    })
}

/// root (with the root role), alice with a read-write role on "a/" and read on "r".
fn store() -> AuthStore {
    let mut a = AuthStore::default();
    for r in [
        user_add("root"),
        grant_role("root", "root"),
        user_add("alice"),
        role_add("app"),
        grant("app", permission::Type::Readwrite, "a/", "a0"),
        grant("app", permission::Type::Read, "r", ""),
        grant_role("alice", "app"),
    ] {
        a.apply(&r, 1).expect("set-up");
    }
    a
}

#[test]
fn enable_needs_root_with_the_root_role() {
    let mut a = AuthStore::default();
    let enable = Request::AuthEnable(AuthEnableRequest {});
    assert!(matches!(a.apply(&enable, 1), Err(Error::RootUserNotExist)));
    a.apply(&user_add("root"), 1).expect("add");
    assert!(matches!(a.apply(&enable, 1), Err(Error::RootRoleNotExist)));
    // The root role need not exist as a role to be granted.
    a.apply(&grant_role("root", "root"), 1).expect("grant");
    let rev = a.revision();
    a.apply(&enable, 1).expect("enable");
    assert!(a.enabled());
    assert_eq!(a.revision(), rev, "enabling does not bump the revision");
    // Enabled: root cannot be deleted nor lose its role, the root role cannot be deleted.
    let del = Request::UserDelete(AuthUserDeleteRequest {
        name: "root".into(),
    });
    assert!(matches!(a.apply(&del, 1), Err(Error::InvalidAuthMgmt)));
    let revoke = Request::UserRevokeRole(AuthUserRevokeRoleRequest {
        name: "root".into(),
        role: "root".into(),
    });
    assert!(matches!(a.apply(&revoke, 1), Err(Error::InvalidAuthMgmt)));
    let del_role = Request::RoleDelete(AuthRoleDeleteRequest {
        role: "root".into(),
    });
    assert!(matches!(a.apply(&del_role, 1), Err(Error::InvalidAuthMgmt)));
    assert_eq!(
        a.apply(&Request::AuthDisable(AuthDisableRequest {}), 1)
            .expect("disable"),
        Changed::AllTokens
    );
    assert!(!a.enabled());
}

#[test]
fn refusals_in_etcds_words() {
    let mut a = store();
    assert!(matches!(a.apply(&user_add(""), 1), Err(Error::UserEmpty)));
    assert!(matches!(
        a.apply(&user_add("alice"), 1),
        Err(Error::UserAlreadyExist)
    ));
    assert!(matches!(a.apply(&role_add(""), 1), Err(Error::RoleEmpty)));
    assert!(matches!(
        a.apply(&role_add("app"), 1),
        Err(Error::RoleAlreadyExist)
    ));
    assert!(matches!(
        a.apply(&grant_role("nobody", "app"), 1),
        Err(Error::UserNotFound)
    ));
    assert!(matches!(
        a.apply(&grant_role("alice", "none"), 1),
        Err(Error::RoleNotFound)
    ));
    // Granting a role held already is no error and no change.
    let rev = a.revision();
    a.apply(&grant_role("alice", "app"), 1).expect("again");
    assert_eq!(a.revision(), rev);
    let revoke = |role: &str| {
        Request::UserRevokeRole(AuthUserRevokeRoleRequest {
            name: "alice".into(),
            role: role.into(),
        })
    };
    assert!(matches!(
        a.apply(&revoke("other"), 1),
        Err(Error::RoleNotGranted)
    ));
    let revoke_perm = |key: &str| {
        Request::RoleRevokePermission(AuthRoleRevokePermissionRequest {
            role: "app".into(),
            key: key.as_bytes().to_vec().into(),
            range_end: Default::default(),
        })
    };
    assert!(matches!(
        a.apply(&revoke_perm("zz"), 1),
        Err(Error::PermissionNotGranted)
    ));
    a.apply(&revoke_perm("r"), 1).expect("revoke r");
    assert_eq!(a.role_perms("app").expect("perms").len(), 1);
    let no_perm = Request::RoleGrantPermission(AuthRoleGrantPermissionRequest {
        name: "app".into(),
        perm: None,
    });
    assert!(matches!(
        a.apply(&no_perm, 1),
        Err(Error::PermissionNotGiven)
    ));
    // Deleting a role takes it from its users.
    a.apply(
        &Request::RoleDelete(AuthRoleDeleteRequest { role: "app".into() }),
        1,
    )
    .expect("delete role");
    assert!(a.user_roles("alice").expect("alice").is_empty());
}

#[test]
fn checks_follow_the_users_roles() {
    let mut a = store();
    a.apply(&Request::AuthEnable(AuthEnableRequest {}), 1)
        .expect("enable");
    let lessor = Lessor::default();
    let alice = Some("alice");
    assert!(a.check(&put("a/x"), alice, &lessor).is_ok());
    assert!(matches!(
        a.check(&put("b"), alice, &lessor),
        Err(Error::PermissionDenied)
    ));
    assert!(matches!(
        a.check(&put("a/x"), None, &lessor),
        Err(Error::UserEmpty)
    ));
    assert!(matches!(
        a.check(&put("a/x"), Some(""), &lessor),
        Err(Error::UserEmpty)
    ));
    assert!(a.check(&put("anything"), Some("root"), &lessor).is_ok());
    // Read-only on "r": no put, no delete; a prev_kv delete of a/ needs read there (has it).
    assert!(a.check(&put("r"), alice, &lessor).is_err());
    let del = |k: &str, end: &str, prev_kv| {
        Request::DeleteRange(DeleteRangeRequest {
            key: k.as_bytes().to_vec().into(),
            range_end: end.as_bytes().to_vec().into(),
            prev_kv,
        })
    };
    assert!(a.check(&del("a/", "a0", true), alice, &lessor).is_ok());
    assert!(a.check(&del("a/", "a1", false), alice, &lessor).is_err());
    // A txn is checked whole: compares, both branches, nested txns.
    let txn = |compare_key: &str, failure_key: &str| {
        Request::Txn(TxnRequest {
            compare: vec![Compare {
                key: compare_key.as_bytes().to_vec().into(),
                ..Default::default()
            }],
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestRange(RangeRequest {
                    key: "r".into(),
                    ..Default::default()
                })),
            }],
            failure: vec![RequestOp {
                request: Some(request_op::Request::RequestTxn(TxnRequest {
                    success: vec![RequestOp {
                        request: Some(request_op::Request::RequestPut(PutRequest {
                            key: failure_key.as_bytes().to_vec().into(),
                            ..Default::default()
                        })),
                    }],
                    ..Default::default()
                })),
            }],
        })
    };
    assert!(a.check(&txn("a/k", "a/v"), alice, &lessor).is_ok());
    assert!(a.check(&txn("zz", "a/v"), alice, &lessor).is_err());
    assert!(a.check(&txn("a/k", "zz"), alice, &lessor).is_err());
    // Auth changes need root.
    assert!(matches!(
        a.check(&role_add("x"), alice, &lessor),
        Err(Error::PermissionDenied)
    ));
    assert!(a.check(&role_add("x"), Some("root"), &lessor).is_ok());
    // A revoked permission takes effect at the next check.
    a.apply(
        &Request::RoleRevokePermission(AuthRoleRevokePermissionRequest {
            role: "app".into(),
            key: "a/".into(),
            range_end: "a0".into(),
        }),
        1,
    )
    .expect("revoke");
    assert!(a.check(&put("a/x"), alice, &lessor).is_err());
}

#[test]
fn logins_and_persistence() {
    let mut a = store();
    let login = |checked_revision| {
        Request::Authenticate(InternalAuthenticateRequest {
            name: "alice".into(),
            simple_token: "abc".into(),
            checked_revision,
        })
    };
    assert!(matches!(
        a.apply(&login(a.revision()), 7),
        Err(Error::AuthNotEnabled)
    ));
    a.apply(&Request::AuthEnable(AuthEnableRequest {}), 1)
        .expect("enable");
    assert_eq!(
        a.apply(&login(a.revision()), 7).expect("login"),
        Changed::Token {
            token: "abc.7".into(),
            user: "alice".into()
        }
    );
    assert!(matches!(
        a.apply(&login(a.revision() - 1), 8),
        Err(Error::AuthOldRevision)
    ));
    let back = AuthStore::from_stored(a.to_stored()).expect("decode");
    assert_eq!(back, a);
}

#[test]
fn passwords_are_bcrypt_hashes() {
    let hash = hash_password("s3cret", 4).expect("hash");
    let user = User {
        name: "u".into(),
        password: hash.into_bytes().into(),
        ..Default::default()
    };
    assert!(password_matches(&user, "s3cret").is_ok());
    assert!(matches!(
        password_matches(&user, "wrong"),
        Err(Error::AuthFailed)
    ));
    let none = User {
        options: Some(UserAddOptions { no_password: true }),
        ..user
    };
    assert!(matches!(
        password_matches(&none, "s3cret"),
        Err(Error::NoPasswordUser)
    ));
}
