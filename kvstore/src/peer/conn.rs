//! Construction of peer servers and peer client channels, in one place: plain HTTP/2 for
//! `http://` peer URLs, mutual TLS for `https://` ones. A [`Dialer`] carries this member's
//! peer client TLS (peer CA and own certificate) from `Server::start` to every peer client
//! (raft senders, snapshot sender, joining, lease forwarding); no global state, so several
//! members can run in one process.

use std::time::Duration;

use tonic::transport::{Channel, ClientTlsConfig, Endpoint, Server, ServerTlsConfig};

use crate::config::is_https;
use crate::error::{Error, Result};

/// Largest peer message accepted: raft appends are bounded by raft's `max_size_per_msg`
/// plus one entry (up to `--max-request-bytes`); snapshots arrive in chunks.
pub const MAX_PEER_MESSAGE: usize = 64 * 1024 * 1024;
/// How long dialling a peer may take before it counts as unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// A server builder for the peer listener: TLS when `tls` is given (client certificates
/// required whenever it names a peer CA, as etcd does).
pub fn server(tls: Option<ServerTlsConfig>) -> Result<Server> {
    let mut b = Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)));
    if let Some(tls) = tls {
        b = b
            .tls_config(tls)
            .map_err(|e| Error::Config(format!("peer TLS: {e}")))?;
    }
    Ok(b)
}

/// How this member dials other members: the client TLS for `https://` peer URLs (peer
/// CA to verify them, this member's peer certificate to present), if configured.
#[derive(Clone, Default)]
pub struct Dialer {
    tls: Option<ClientTlsConfig>,
}

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dialer")
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Dialer {
    /// A dialer using `tls` for `https://` peer URLs (none: only `http://` ones work).
    pub fn new(tls: Option<ClientTlsConfig>) -> Dialer {
        Dialer { tls }
    }

    /// A lazily connecting channel to the peer at `url` (`http://` or `https://host:port`),
    /// on [`super::dial`]'s connections (quick to come back after a network fault).
    pub fn channel(&self, url: &str) -> Result<Channel> {
        let mut ep = Endpoint::from_shared(url.to_string())
            .map_err(|e| Error::Config(format!("peer URL {url:?}: {e}")))?
            .connect_timeout(CONNECT_TIMEOUT)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true);
        if is_https(url) {
            let tls = self.tls.clone().ok_or_else(|| {
                Error::Config(format!(
                    "peer URL {url} is https but no peer TLS (--peer-cert-file, --peer-key-file, --peer-trusted-ca-file) is configured"
                ))
            })?;
            ep = ep
                .tls_config(tls)
                .map_err(|e| Error::Config(format!("peer TLS for {url}: {e}")))?;
        }
        Ok(ep.connect_with_connector_lazy(super::dial::PeerConnector))
    }

    /// A peer client on `url`, with the peer message size limits.
    pub fn client(
        &self,
        url: &str,
    ) -> Result<crate::proto::peerpb::peer_client::PeerClient<Channel>> {
        Ok(
            crate::proto::peerpb::peer_client::PeerClient::new(self.channel(url)?)
                .max_decoding_message_size(MAX_PEER_MESSAGE)
                .max_encoding_message_size(MAX_PEER_MESSAGE),
        )
    }
}

/// A failed peer call described with its causes, so a TLS refusal (unknown CA, bad
/// certificate) shows in the log rather than a bare "transport error".
pub fn describe(s: &tonic::Status) -> String {
    let mut out = s.message().to_string();
    for c in causes(s) {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
    }
    out
}

/// The chain of errors under a failed peer call, outermost first.
fn causes(s: &tonic::Status) -> impl Iterator<Item = &(dyn std::error::Error + 'static)> {
    std::iter::successors(std::error::Error::source(s), |c| c.source())
}

/// Whether a failed peer call was refused at connect: nothing listens on the peer's port, so
/// its process is gone. A timeout or a reset says less (a network fault causes those too).
pub fn refused(s: &tonic::Status) -> bool {
    causes(s).any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A call to a port nothing listens on is told apart as refused; one that gets an answer
    /// (an error status from a live server) is not.
    #[tokio::test]
    async fn a_closed_port_is_refused() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = closed.local_addr().expect("addr").port();
        drop(closed);
        let mut c = Dialer::default()
            .client(&format!("http://127.0.0.1:{port}"))
            .expect("client");
        let e = c
            .members(crate::proto::peerpb::MembersRequest::default())
            .await
            .expect_err("nothing listens");
        assert!(refused(&e), "not seen as refused: {}", describe(&e));
        assert!(!refused(&tonic::Status::unavailable("no leader")));
    }

    #[tokio::test]
    async fn https_needs_peer_tls() {
        let plain = Dialer::default();
        assert!(plain.channel("http://127.0.0.1:1").is_ok());
        let e = plain.channel("https://127.0.0.1:1").expect_err("no TLS");
        assert!(e.to_string().contains("--peer-cert-file"), "{e}");
    }
}
