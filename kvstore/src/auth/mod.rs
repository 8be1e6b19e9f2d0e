//! Authentication and role-based access as etcd 3.4 has it.
//!
//! Users (bcrypt-hashed passwords, or none), roles holding READ / WRITE / READWRITE
//! permissions on keys and ranges, the `root` user and role, and the enabled flag are
//! replicated state: they change only by applying committed Auth requests, so every member
//! holds the same, and they are persisted with the state machine (one key) and travel in
//! snapshots. Each change bumps the auth revision (etcd's `authRevision`).
//!
//! Where checks happen:
//! - Writes (Put, DeleteRange, Txn, LeaseRevoke, the Auth service's own changes) carry the
//!   user who sent them in the raft entry and are checked when applied, against the state
//!   at that point of the log ([`AuthStore::check`]): a permission revoked before the write
//!   is applied refuses it on every member alike, with no old-revision races.
//! - Reads (Range, Watch creation, UserGet, RoleGet, the lists) are checked by the member
//!   serving them, after its read barrier when they are linearizable.
//! - Membership changes, Hash and HashKV need the root role, checked by the member taking
//!   them, as etcd does. Status, Alarm, MoveLeader, Compact and the Lease service beyond
//!   LeaseRevoke are not checked (etcd 3.4 does not check them either).
//!
//! [`tokens`] holds the simple tokens a login hands out; [`perms`] the merged ranges.

pub mod perms;
pub mod tokens;

use std::collections::{BTreeMap, HashMap};

use prost::Message;

use crate::backend::{Backend, WriteBatch, keys};
use crate::error::{Error, Result};
use crate::lease::Lessor;
use crate::proto::authpb::{Permission, Role, User, UserAddOptions};
use crate::proto::etcdserverpb::{
    AuthRoleGrantPermissionRequest, AuthRoleRevokePermissionRequest, AuthUserAddRequest,
    AuthUserChangePasswordRequest, RequestOp, TxnRequest, request_op,
};
use crate::proto::kvstorepb::{StoredAuth, internal_request::Request};
use perms::{Access, UserPerms};

/// The user and role with every permission, and the only ones that may change auth.
pub const ROOT: &str = "root";

/// The replicated auth state.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct AuthStore {
    enabled: bool,
    revision: u64,
    users: BTreeMap<String, User>,
    roles: BTreeMap<String, Role>,
    /// Each user's permissions merged over their roles, rebuilt on every change.
    merged: HashMap<String, UserPerms>,
}

/// What applying an auth request changed, beyond the store itself.
#[derive(Debug, PartialEq, Eq)]
pub enum Changed {
    /// Nothing else.
    Nothing,
    /// `user`'s tokens are no longer valid (deleted, new password).
    TokensOf(String),
    /// No token is valid any more (auth disabled).
    AllTokens,
    /// A login: the token to record for the user.
    Token { token: String, user: String },
}

impl AuthStore {
    /// The state stored in `backend` (disabled and empty if none was ever stored).
    pub fn load(backend: &dyn Backend) -> Result<AuthStore> {
        match backend.get(keys::AUTH)? {
            Some(b) => AuthStore::from_stored(StoredAuth::decode(b.as_slice())?),
            None => Ok(AuthStore::default()),
        }
    }

    pub fn from_stored(s: StoredAuth) -> Result<AuthStore> {
        let name = |b: &[u8]| {
            String::from_utf8(b.to_vec())
                .map_err(|_| Error::Corrupt("auth record with a name that is not UTF-8".into()))
        };
        let mut a = AuthStore {
            enabled: s.enabled,
            revision: s.revision,
            ..Default::default()
        };
        for u in s.users {
            a.users.insert(name(&u.name)?, u);
        }
        for r in s.roles {
            a.roles.insert(name(&r.name)?, r);
        }
        a.refresh();
        Ok(a)
    }

    pub fn to_stored(&self) -> StoredAuth {
        StoredAuth {
            enabled: self.enabled,
            revision: self.revision,
            users: self.users.values().cloned().collect(),
            roles: self.roles.values().cloned().collect(),
        }
    }

    /// Adds the state to `batch`.
    pub fn persist(&self, batch: &mut WriteBatch) {
        batch.put(keys::AUTH, self.to_stored().encode_to_vec());
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn revision(&self) -> u64 {
        self.revision
    }

    fn refresh(&mut self) {
        self.merged = self
            .users
            .iter()
            .map(|(name, u)| {
                let perms = u
                    .roles
                    .iter()
                    .filter_map(|r| self.roles.get(r))
                    .flat_map(|r| r.key_permission.iter());
                (name.clone(), UserPerms::merge(perms))
            })
            .collect();
    }

    /// A change: bump the revision, rebuild the merged permissions.
    fn commit(&mut self) {
        self.revision += 1;
        self.refresh();
    }

    fn is_root(&self, user: &str) -> bool {
        self.users
            .get(user)
            .is_some_and(|u| u.roles.iter().any(|r| r == ROOT))
    }

    /// etcd's `IsAdminPermitted`: anyone while auth is off; then only a user with the root
    /// role.
    pub fn admin(&self, user: Option<&str>) -> Result<()> {
        if !self.enabled {
            return Ok(());
        }
        let user = match user {
            Some(u) if !u.is_empty() => u,
            _ => return Err(Error::UserEmpty),
        };
        if !self.users.contains_key(user) {
            return Err(Error::UserNotFound);
        }
        if !self.is_root(user) {
            return Err(Error::PermissionDenied);
        }
        Ok(())
    }

    /// etcd's `isOpPermitted`: whether `user` may `access` the key or range.
    pub fn allowed(
        &self,
        user: Option<&str>,
        access: Access,
        key: &[u8],
        range_end: &[u8],
    ) -> Result<()> {
        if !self.enabled {
            return Ok(());
        }
        let user = match user {
            Some(u) if !u.is_empty() => u,
            _ => return Err(Error::UserEmpty),
        };
        if self.is_root(user) {
            return Ok(());
        }
        match self.merged.get(user) {
            Some(p) if p.allows(access, key, range_end) => Ok(()),
            _ => Err(Error::PermissionDenied),
        }
    }

    /// Checks a request a client sent as `user` (None: no credentials) before it is applied
    /// (see the module doc for what each request needs).
    pub fn check(&self, r: &Request, user: Option<&str>, lessor: &Lessor) -> Result<()> {
        if !self.enabled {
            return Ok(());
        }
        match r {
            Request::Put(p) => self.check_put(user, &p.key, p.lease, p.prev_kv, lessor),
            Request::DeleteRange(d) => self.check_delete(user, &d.key, &d.range_end, d.prev_kv),
            Request::Txn(t) => self.check_txn(user, t, lessor),
            Request::LeaseRevoke(l) => self.check_lease_keys(user, l.id, lessor),
            Request::AuthEnable(_)
            | Request::AuthDisable(_)
            | Request::UserAdd(_)
            | Request::UserDelete(_)
            | Request::UserChangePassword(_)
            | Request::UserGrantRole(_)
            | Request::UserRevokeRole(_)
            | Request::RoleAdd(_)
            | Request::RoleDelete(_)
            | Request::RoleGrantPermission(_)
            | Request::RoleRevokePermission(_)
            | Request::MemberUpdate(_) => self.admin(user),
            Request::Compaction(_)
            | Request::LeaseGrant(_)
            | Request::Publish(_)
            | Request::Alarm(_)
            | Request::Authenticate(_) => Ok(()),
        }
    }

    fn check_put(
        &self,
        user: Option<&str>,
        key: &[u8],
        lease: i64,
        prev_kv: bool,
        lessor: &Lessor,
    ) -> Result<()> {
        self.allowed(user, Access::Write, key, b"")?;
        // A lease whose other keys this user may not write is a lease it could not revoke:
        // attaching it to a new key is refused too (etcd's checkLeasePuts).
        self.check_lease_keys(user, lease, lessor)?;
        if prev_kv {
            self.allowed(user, Access::Read, key, b"")?;
        }
        Ok(())
    }

    fn check_delete(
        &self,
        user: Option<&str>,
        key: &[u8],
        range_end: &[u8],
        prev_kv: bool,
    ) -> Result<()> {
        self.allowed(user, Access::Write, key, range_end)?;
        if prev_kv {
            self.allowed(user, Access::Read, key, range_end)?;
        }
        Ok(())
    }

    /// Every compare and both branches, nested txns included (etcd 3.4 does not look into
    /// nested txns; a nested write is checked here like any other).
    fn check_txn(&self, user: Option<&str>, t: &TxnRequest, lessor: &Lessor) -> Result<()> {
        for c in &t.compare {
            self.allowed(user, Access::Read, &c.key, &c.range_end)?;
        }
        self.check_ops(user, &t.success, lessor)?;
        self.check_ops(user, &t.failure, lessor)
    }

    fn check_ops(&self, user: Option<&str>, ops: &[RequestOp], lessor: &Lessor) -> Result<()> {
        for op in ops {
            match &op.request {
                Some(request_op::Request::RequestRange(r)) => {
                    self.allowed(user, Access::Read, &r.key, &r.range_end)?
                }
                Some(request_op::Request::RequestPut(p)) => {
                    self.check_put(user, &p.key, p.lease, p.prev_kv, lessor)?
                }
                Some(request_op::Request::RequestDeleteRange(d)) => {
                    self.check_delete(user, &d.key, &d.range_end, d.prev_kv)?
                }
                Some(request_op::Request::RequestTxn(t)) => self.check_txn(user, t, lessor)?,
                None => {}
            }
        }
        Ok(())
    }

    fn check_lease_keys(&self, user: Option<&str>, lease: i64, lessor: &Lessor) -> Result<()> {
        if lease == 0 {
            return Ok(());
        }
        for key in lessor.keys(lease) {
            self.allowed(user, Access::Write, key, b"")?;
        }
        Ok(())
    }

    /// Whether `user` holds `role` (a non-root user may read its own roles).
    pub fn has_role(&self, user: &str, role: &str) -> bool {
        self.users
            .get(user)
            .is_some_and(|u| u.roles.iter().any(|r| r == role))
    }

    /// A user record (for a password check before a login is proposed).
    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.get(name)
    }

    /// The roles of `name` (etcd's UserGet).
    pub fn user_roles(&self, name: &str) -> Result<Vec<String>> {
        self.users
            .get(name)
            .map(|u| u.roles.clone())
            .ok_or(Error::UserNotFound)
    }

    /// The permissions of `role` (etcd's RoleGet).
    pub fn role_perms(&self, role: &str) -> Result<Vec<Permission>> {
        self.roles
            .get(role)
            .map(|r| r.key_permission.clone())
            .ok_or(Error::RoleNotFound)
    }

    pub fn user_names(&self) -> Vec<String> {
        self.users.keys().cloned().collect()
    }

    pub fn role_names(&self) -> Vec<String> {
        self.roles.keys().cloned().collect()
    }

    /// Applies one of the Auth service's writes as etcd 3.4's auth store does (same refusals,
    /// same order of checks). `id` is the entry's request id, which makes a login's token
    /// unique. Returns what else changed; the caller persists the store.
    pub fn apply(&mut self, r: &Request, id: u64) -> Result<Changed> {
        match r {
            Request::AuthEnable(_) => {
                if self.enabled {
                    return Ok(Changed::Nothing);
                }
                let root = self.users.get(ROOT).ok_or(Error::RootUserNotExist)?;
                if !root.roles.iter().any(|r| r == ROOT) {
                    return Err(Error::RootRoleNotExist);
                }
                self.enabled = true;
                // etcd does not bump the revision on enable.
                self.refresh();
                tracing::info!("authentication enabled");
                Ok(Changed::Nothing)
            }
            Request::AuthDisable(_) => {
                if !self.enabled {
                    return Ok(Changed::Nothing);
                }
                self.enabled = false;
                self.commit();
                tracing::info!("authentication disabled");
                Ok(Changed::AllTokens)
            }
            Request::Authenticate(a) => {
                if !self.enabled {
                    return Err(Error::AuthNotEnabled);
                }
                let user = self.users.get(&a.name).ok_or(Error::AuthFailed)?;
                if no_password(&user.options) {
                    return Err(Error::AuthFailed);
                }
                if a.checked_revision != self.revision {
                    return Err(Error::AuthOldRevision);
                }
                Ok(Changed::Token {
                    token: format!("{}.{id}", a.simple_token),
                    user: a.name.clone(),
                })
            }
            Request::UserAdd(u) => self.user_add(u),
            Request::UserDelete(u) => {
                if self.enabled && u.name == ROOT {
                    return Err(Error::InvalidAuthMgmt);
                }
                self.users.remove(&u.name).ok_or(Error::UserNotFound)?;
                self.commit();
                Ok(Changed::TokensOf(u.name.clone()))
            }
            Request::UserChangePassword(u) => self.change_password(u),
            Request::UserGrantRole(g) => {
                if g.role != ROOT && !self.roles.contains_key(&g.role) {
                    // etcd looks the user up first.
                    if !self.users.contains_key(&g.user) {
                        return Err(Error::UserNotFound);
                    }
                    return Err(Error::RoleNotFound);
                }
                let user = self.users.get_mut(&g.user).ok_or(Error::UserNotFound)?;
                if let Err(at) = user.roles.binary_search(&g.role) {
                    user.roles.insert(at, g.role.clone());
                    self.commit();
                }
                Ok(Changed::Nothing)
            }
            Request::UserRevokeRole(r) => {
                if self.enabled && r.name == ROOT && r.role == ROOT {
                    return Err(Error::InvalidAuthMgmt);
                }
                let user = self.users.get_mut(&r.name).ok_or(Error::UserNotFound)?;
                let before = user.roles.len();
                user.roles.retain(|x| x != &r.role);
                if user.roles.len() == before {
                    return Err(Error::RoleNotGranted);
                }
                self.commit();
                Ok(Changed::Nothing)
            }
            Request::RoleAdd(r) => {
                if r.name.is_empty() {
                    return Err(Error::RoleEmpty);
                }
                if self.roles.contains_key(&r.name) {
                    return Err(Error::RoleAlreadyExist);
                }
                self.roles.insert(
                    r.name.clone(),
                    Role {
                        name: r.name.clone().into_bytes().into(),
                        key_permission: Vec::new(),
                    },
                );
                self.commit();
                Ok(Changed::Nothing)
            }
            Request::RoleDelete(r) => {
                if self.enabled && r.role == ROOT {
                    return Err(Error::InvalidAuthMgmt);
                }
                self.roles.remove(&r.role).ok_or(Error::RoleNotFound)?;
                for u in self.users.values_mut() {
                    u.roles.retain(|x| x != &r.role);
                }
                self.commit();
                Ok(Changed::Nothing)
            }
            Request::RoleGrantPermission(g) => self.grant_permission(g),
            Request::RoleRevokePermission(r) => self.revoke_permission(r),
            _ => Ok(Changed::Nothing),
        }
    }

    fn user_add(&mut self, u: &AuthUserAddRequest) -> Result<Changed> {
        if u.name.is_empty() {
            return Err(Error::UserEmpty);
        }
        if self.users.contains_key(&u.name) {
            return Err(Error::UserAlreadyExist);
        }
        let options = u.options.unwrap_or(UserAddOptions { no_password: false });
        let password = if options.no_password {
            Default::default()
        } else {
            u.hashed_password.clone().into_bytes().into()
        };
        self.users.insert(
            u.name.clone(),
            User {
                name: u.name.clone().into_bytes().into(),
                password,
                roles: Vec::new(),
                options: Some(options),
            },
        );
        self.commit();
        Ok(Changed::Nothing)
    }

    fn change_password(&mut self, u: &AuthUserChangePasswordRequest) -> Result<Changed> {
        let user = self.users.get_mut(&u.name).ok_or(Error::UserNotFound)?;
        user.password = u.hashed_password.clone().into_bytes().into();
        self.commit();
        Ok(Changed::TokensOf(u.name.clone()))
    }

    fn grant_permission(&mut self, g: &AuthRoleGrantPermissionRequest) -> Result<Changed> {
        let perm = g.perm.as_ref().ok_or(Error::PermissionNotGiven)?;
        let role = self.roles.get_mut(&g.name).ok_or(Error::RoleNotFound)?;
        match role
            .key_permission
            .iter_mut()
            .find(|p| p.key == perm.key && p.range_end == perm.range_end)
        {
            Some(p) => p.perm_type = perm.perm_type,
            None => {
                role.key_permission.push(perm.clone());
                role.key_permission.sort_by(|a, b| a.key.cmp(&b.key));
            }
        }
        self.commit();
        Ok(Changed::Nothing)
    }

    fn revoke_permission(&mut self, r: &AuthRoleRevokePermissionRequest) -> Result<Changed> {
        let role = self.roles.get_mut(&r.role).ok_or(Error::RoleNotFound)?;
        let before = role.key_permission.len();
        role.key_permission
            .retain(|p| p.key != r.key || p.range_end != r.range_end);
        if role.key_permission.len() == before {
            return Err(Error::PermissionNotGranted);
        }
        self.commit();
        Ok(Changed::Nothing)
    }
}

fn no_password(o: &Option<UserAddOptions>) -> bool {
    o.is_some_and(|o| o.no_password)
}

/// Checks `password` against `user`'s bcrypt hash (etcd's CheckPassword). Slow by design
/// (bcrypt): callers run it off the async threads.
pub fn password_matches(user: &User, password: &str) -> Result<()> {
    if no_password(&user.options) {
        return Err(Error::NoPasswordUser);
    }
    let hash = std::str::from_utf8(&user.password).map_err(|_| Error::AuthFailed)?;
    match bcrypt::verify(password, hash) {
        Ok(true) => Ok(()),
        _ => Err(Error::AuthFailed),
    }
}

/// Hashes a new password with bcrypt at `cost` (`--bcrypt-cost`, etcd's default 10).
pub fn hash_password(password: &str, cost: u32) -> Result<String> {
    bcrypt::hash(password, cost).map_err(|e| Error::InvalidArgument(format!("bcrypt: {e}")))
}

#[cfg(test)]
mod tests;
