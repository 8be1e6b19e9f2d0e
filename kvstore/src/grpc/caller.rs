//! Who a client request runs as, for the permission checks of [`crate::auth`].
//!
//! As etcd 3.4 (`AuthInfoFromCtx`, then `AuthInfoFromTLS`): the user of the request's token
//! (gRPC metadata `token`, or `authorization`, the header the JSON gateway passes it in);
//! without a token, and only with `--client-cert-auth`, the Common Name of the client
//! certificate its TLS connection was verified with (a certificate without one: the empty
//! name); otherwise nobody. A token always wins over the certificate, and a token this member
//! does not know (expired, from before a restart, of a deleted user) is refused with etcd's
//! "invalid auth token" whether or not authentication is on, so a client logs in again.
//!
//! The JSON gateway's calls never carry a certificate (they are made in process, with no
//! connection), as etcd ignores the certificate of its gateway's loopback connection; a call
//! with etcd's gateway marker (`grpcgateway-accept` metadata) is treated the same. A JSON
//! request whose own certificate has a Common Name is refused while authentication is on, as
//! etcd refuses it ([`crate::gateway`]), rather than run as nobody.

use tonic::Request;
use tonic::metadata::MetadataMap;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use crate::error::{Error, Result};
use crate::replica::Replica;

/// What a request shows of who sent it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Credentials {
    /// The token in its metadata.
    token: Option<String>,
    /// The Common Name of its connection's verified client certificate, when client
    /// certificates name users (`--client-cert-auth`).
    cert_user: Option<String>,
}

impl Credentials {
    /// The credentials of `req`.
    pub(crate) fn of<T>(member: &Replica, req: &Request<T>) -> Credentials {
        let token = token(req.metadata());
        // Parsed per request (a few microseconds), only when no token says who it is.
        let cert_user = if token.is_none()
            && member.client_cert_auth
            && !req.metadata().contains_key("grpcgateway-accept")
        {
            cert_name(req.extensions().get())
        } else {
            None
        };
        Credentials { token, cert_user }
    }
}

/// The token a request carries, if any.
fn token(md: &MetadataMap) -> Option<String> {
    md.get("token")
        .or_else(|| md.get("authorization"))
        .map(|v| v.to_str().map(str::to_string).unwrap_or_default())
}

/// The Common Name of the client certificate a TLS connection was verified with (`info`: the
/// connection's, as tonic and [`super::incoming`] put it in a request's extensions); None
/// over plain TCP or without a client certificate.
pub(crate) fn cert_name(info: Option<&TlsConnectInfo<TcpConnectInfo>>) -> Option<String> {
    let chain = info?.peer_certs()?;
    chain.first().map(|leaf| common_name(leaf))
}

/// The Common Name of certificate `der` as Go reads it (the last CN attribute of the subject
/// that is a string; empty without one). The certificate was verified in the handshake, so
/// it parses; if it did not, it names nobody known either.
fn common_name(der: &[u8]) -> String {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return String::new();
    };
    cert.subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok())
        .last()
        .unwrap_or_default()
        .to_string()
}

/// The user `creds` name; None for nobody.
pub(crate) fn user_of(member: &Replica, creds: &Credentials) -> Result<Option<String>> {
    let Some(token) = &creds.token else {
        return Ok(creds.cert_user.clone());
    };
    match member.state().read().tokens.user(token) {
        Some(u) => Ok(Some(u)),
        None => Err(Error::InvalidAuthToken),
    }
}

/// The user request `req` runs as.
pub(crate) fn caller<T>(member: &Replica, req: &Request<T>) -> Result<Option<String>> {
    user_of(member, &Credentials::of(member, req))
}
