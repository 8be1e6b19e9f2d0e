//! The Auth service: enabling and disabling authentication, logins, users and roles.
//!
//! Changes are raft entries applied by [`crate::auth::AuthStore::apply`], checked there
//! against the sender's rights; reads (UserGet, RoleGet, the lists, AuthStatus) are served
//! by this member after a read barrier. Passwords are hashed here, by the member that took the
//! request (etcd 3.5's way), so a password never enters the raft log; a login checks the
//! password here and proposes only the user and a fresh token.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::caller::caller;
use crate::apply::Applied;
use crate::auth::{self, tokens::Tokens};
use crate::error::{Error, Result};
use crate::proto::etcdserverpb::auth_server::Auth;
use crate::proto::etcdserverpb::*;
use crate::proto::kvstorepb::{InternalAuthenticateRequest, internal_request::Request as Internal};
use crate::replica::Replica;

/// How many times a login is retried when the auth state changed between the password check
/// and the login's entry (etcd retries until it does not).
const LOGIN_ATTEMPTS: usize = 5;

pub struct AuthService {
    member: Arc<Replica>,
}

impl AuthService {
    pub fn new(member: Arc<Replica>) -> Self {
        AuthService { member }
    }

    fn header(&self) -> Option<ResponseHeader> {
        self.member.header(self.member.current_revision())
    }

    /// Proposes an auth change as the request's caller; the header of its answer.
    async fn change<T>(&self, req: &Request<T>, r: Internal) -> Result<Option<ResponseHeader>> {
        let who = caller(&self.member, req)?;
        match self
            .member
            .propose_as(r, Some(who.as_deref().unwrap_or("")))
            .await?
        {
            Applied::Auth { revision, .. } => Ok(self.member.header(revision)),
            other => Err(Error::Serve(format!("unexpected apply result {other:?}"))),
        }
    }

    /// Refuses early (before hashing a password) a change the caller may not make; apply
    /// checks again.
    fn admin_here<T>(&self, req: &Request<T>) -> Result<()> {
        let who = caller(&self.member, req)?;
        self.member.state().read().auth.admin(who.as_deref())
    }

    /// A read after the barrier, by a caller allowed to make it (`allowed` gets the auth
    /// state and the caller).
    async fn read<T, R>(
        &self,
        req: &Request<T>,
        f: impl FnOnce(&auth::AuthStore, Option<&str>) -> Result<R>,
    ) -> Result<R> {
        let who = caller(&self.member, req)?;
        self.member.read_barrier().await?;
        let sm = self.member.state().read();
        f(&sm.auth, who.as_deref())
    }

    fn bcrypt_cost(&self) -> u32 {
        self.member.bcrypt_cost
    }
}

async fn hash(password: String, cost: u32) -> Result<String> {
    tokio::task::spawn_blocking(move || auth::hash_password(&password, cost))
        .await
        .map_err(|e| Error::Serve(format!("password hashing task: {e}")))?
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn auth_enable(
        &self,
        req: Request<AuthEnableRequest>,
    ) -> Result<Response<AuthEnableResponse>, Status> {
        let header = self
            .change(&req, Internal::AuthEnable(AuthEnableRequest {}))
            .await?;
        Ok(Response::new(AuthEnableResponse { header }))
    }

    async fn auth_disable(
        &self,
        req: Request<AuthDisableRequest>,
    ) -> Result<Response<AuthDisableResponse>, Status> {
        let header = self
            .change(&req, Internal::AuthDisable(AuthDisableRequest {}))
            .await?;
        Ok(Response::new(AuthDisableResponse { header }))
    }

    async fn auth_status(
        &self,
        req: Request<AuthStatusRequest>,
    ) -> Result<Response<AuthStatusResponse>, Status> {
        let (enabled, auth_revision) = self
            .read(&req, |a, _| Ok((a.enabled(), a.revision())))
            .await?;
        Ok(Response::new(AuthStatusResponse {
            header: self.header(),
            enabled,
            auth_revision,
        }))
    }

    async fn authenticate(
        &self,
        req: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        let r = req.into_inner();
        self.member.read_barrier().await?;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (user, revision) = {
                let sm = self.member.state().read();
                if !sm.auth.enabled() {
                    return Err(Error::AuthNotEnabled.into());
                }
                let user = sm.auth.user(&r.name).cloned().ok_or(Error::AuthFailed)?;
                (user, sm.auth.revision())
            };
            let password = r.password.clone();
            tokio::task::spawn_blocking(move || auth::password_matches(&user, &password))
                .await
                .map_err(|e| Error::Serve(format!("password check task: {e}")))??;
            let login = InternalAuthenticateRequest {
                name: r.name.clone(),
                simple_token: Tokens::prefix(),
                checked_revision: revision,
            };
            match self
                .member
                .propose_as(Internal::Authenticate(login), None)
                .await
            {
                Ok(Applied::Auth { revision, token }) => {
                    return Ok(Response::new(AuthenticateResponse {
                        header: self.member.header(revision),
                        token,
                    }));
                }
                Err(Error::AuthOldRevision) if attempts < LOGIN_ATTEMPTS => {
                    tracing::info!("auth changed while a password was checked; checking again");
                }
                Err(e) => return Err(e.into()),
                Ok(other) => {
                    return Err(Error::Serve(format!("unexpected apply result {other:?}")).into());
                }
            }
        }
    }

    async fn user_add(
        &self,
        req: Request<AuthUserAddRequest>,
    ) -> Result<Response<AuthUserAddResponse>, Status> {
        self.admin_here(&req)?;
        let mut r = req.get_ref().clone();
        if r.name.is_empty() {
            return Err(Error::UserEmpty.into());
        }
        if !r.options.is_some_and(|o| o.no_password) {
            r.hashed_password = hash(std::mem::take(&mut r.password), self.bcrypt_cost()).await?;
        }
        r.password.clear();
        let header = self.change(&req, Internal::UserAdd(r)).await?;
        Ok(Response::new(AuthUserAddResponse { header }))
    }

    async fn user_get(
        &self,
        req: Request<AuthUserGetRequest>,
    ) -> Result<Response<AuthUserGetResponse>, Status> {
        let name = req.get_ref().name.clone();
        let roles = self
            .read(&req, |a, who| {
                // A user may read its own roles (etcd's authApplierV3.UserGet).
                if let Err(e) = a.admin(who)
                    && who != Some(name.as_str())
                {
                    return Err(e);
                }
                a.user_roles(&name)
            })
            .await?;
        Ok(Response::new(AuthUserGetResponse {
            header: self.header(),
            roles,
        }))
    }

    async fn user_list(
        &self,
        req: Request<AuthUserListRequest>,
    ) -> Result<Response<AuthUserListResponse>, Status> {
        let users = self
            .read(&req, |a, who| {
                a.admin(who)?;
                Ok(a.user_names())
            })
            .await?;
        Ok(Response::new(AuthUserListResponse {
            header: self.header(),
            users,
        }))
    }

    async fn user_delete(
        &self,
        req: Request<AuthUserDeleteRequest>,
    ) -> Result<Response<AuthUserDeleteResponse>, Status> {
        let r = req.get_ref().clone();
        let header = self.change(&req, Internal::UserDelete(r)).await?;
        Ok(Response::new(AuthUserDeleteResponse { header }))
    }

    async fn user_change_password(
        &self,
        req: Request<AuthUserChangePasswordRequest>,
    ) -> Result<Response<AuthUserChangePasswordResponse>, Status> {
        self.admin_here(&req)?;
        let mut r = req.get_ref().clone();
        r.hashed_password = hash(std::mem::take(&mut r.password), self.bcrypt_cost()).await?;
        let header = self.change(&req, Internal::UserChangePassword(r)).await?;
        Ok(Response::new(AuthUserChangePasswordResponse { header }))
    }

    async fn user_grant_role(
        &self,
        req: Request<AuthUserGrantRoleRequest>,
    ) -> Result<Response<AuthUserGrantRoleResponse>, Status> {
        let r = req.get_ref().clone();
        let header = self.change(&req, Internal::UserGrantRole(r)).await?;
        Ok(Response::new(AuthUserGrantRoleResponse { header }))
    }

    async fn user_revoke_role(
        &self,
        req: Request<AuthUserRevokeRoleRequest>,
    ) -> Result<Response<AuthUserRevokeRoleResponse>, Status> {
        let r = req.get_ref().clone();
        let header = self.change(&req, Internal::UserRevokeRole(r)).await?;
        Ok(Response::new(AuthUserRevokeRoleResponse { header }))
    }

    async fn role_add(
        &self,
        req: Request<AuthRoleAddRequest>,
    ) -> Result<Response<AuthRoleAddResponse>, Status> {
        let r = req.get_ref().clone();
        let header = self.change(&req, Internal::RoleAdd(r)).await?;
        Ok(Response::new(AuthRoleAddResponse { header }))
    }

    async fn role_get(
        &self,
        req: Request<AuthRoleGetRequest>,
    ) -> Result<Response<AuthRoleGetResponse>, Status> {
        let role = req.get_ref().role.clone();
        let perm = self
            .read(&req, |a, who| {
                // A user may read the roles it holds (etcd's authApplierV3.RoleGet).
                if let Err(e) = a.admin(who)
                    && !who.is_some_and(|u| a.has_role(u, &role))
                {
                    return Err(e);
                }
                a.role_perms(&role)
            })
            .await?;
        Ok(Response::new(AuthRoleGetResponse {
            header: self.header(),
            perm,
        }))
    }

    async fn role_list(
        &self,
        req: Request<AuthRoleListRequest>,
    ) -> Result<Response<AuthRoleListResponse>, Status> {
        let roles = self
            .read(&req, |a, who| {
                a.admin(who)?;
                Ok(a.role_names())
            })
            .await?;
        Ok(Response::new(AuthRoleListResponse {
            header: self.header(),
            roles,
        }))
    }

    async fn role_delete(
        &self,
        req: Request<AuthRoleDeleteRequest>,
    ) -> Result<Response<AuthRoleDeleteResponse>, Status> {
        let r = req.get_ref().clone();
        let header = self.change(&req, Internal::RoleDelete(r)).await?;
        Ok(Response::new(AuthRoleDeleteResponse { header }))
    }

    async fn role_grant_permission(
        &self,
        req: Request<AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<AuthRoleGrantPermissionResponse>, Status> {
        let r = req.get_ref().clone();
        if r.perm.is_none() {
            return Err(Error::PermissionNotGiven.into());
        }
        let header = self.change(&req, Internal::RoleGrantPermission(r)).await?;
        Ok(Response::new(AuthRoleGrantPermissionResponse { header }))
    }

    async fn role_revoke_permission(
        &self,
        req: Request<AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<AuthRoleRevokePermissionResponse>, Status> {
        let r = req.get_ref().clone();
        let header = self.change(&req, Internal::RoleRevokePermission(r)).await?;
        Ok(Response::new(AuthRoleRevokePermissionResponse { header }))
    }
}
