//! Who a client request runs as, for the permission checks of [`crate::auth`].
//!
//! As etcd: the user of the request's token (gRPC metadata `token`, or `authorization`, the
//! header the JSON gateway passes it in); without a token, nobody. A token this member does
//! not know (expired, from before a restart, of a deleted user) is refused with etcd's
//! "invalid auth token" whether or not authentication is on, so a client logs in again.

use tonic::metadata::MetadataMap;

use crate::error::{Error, Result};
use crate::replica::Replica;

/// The token a request carries, if any.
pub(crate) fn token(md: &MetadataMap) -> Option<String> {
    md.get("token")
        .or_else(|| md.get("authorization"))
        .map(|v| v.to_str().map(str::to_string).unwrap_or_default())
}

/// The user `token` was issued to; None without a token.
pub(crate) fn user_of(member: &Replica, token: Option<&str>) -> Result<Option<String>> {
    let Some(token) = token else {
        return Ok(None);
    };
    match member.state().read().tokens.user(token) {
        Some(u) => Ok(Some(u)),
        None => Err(Error::InvalidAuthToken),
    }
}

/// The user a request with metadata `md` runs as.
pub(crate) fn caller(member: &Replica, md: &MetadataMap) -> Result<Option<String>> {
    user_of(member, token(md).as_deref())
}
