//! Construction of peer servers and peer client channels, in one place: plain HTTP/2
//! today; transport security plugs in here without touching the callers.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint, Server};

use crate::error::{Error, Result};

/// Largest peer message accepted: raft appends are bounded by raft's `max_size_per_msg`
/// plus one entry (up to `--max-request-bytes`); snapshots arrive in chunks.
pub const MAX_PEER_MESSAGE: usize = 64 * 1024 * 1024;
/// How long dialling a peer may take before it counts as unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// A server builder for the peer listener.
pub fn server() -> Server {
    Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)))
}

/// A lazily connecting channel to the peer at `url` (`http://host:port`).
pub fn channel(url: &str) -> Result<Channel> {
    let ep = Endpoint::from_shared(url.to_string())
        .map_err(|e| Error::Config(format!("peer URL {url:?}: {e}")))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true);
    Ok(ep.connect_lazy())
}

/// A peer client on `url`, with the peer message size limits.
pub fn client(url: &str) -> Result<crate::proto::peerpb::peer_client::PeerClient<Channel>> {
    Ok(
        crate::proto::peerpb::peer_client::PeerClient::new(channel(url)?)
            .max_decoding_message_size(MAX_PEER_MESSAGE)
            .max_encoding_message_size(MAX_PEER_MESSAGE),
    )
}
