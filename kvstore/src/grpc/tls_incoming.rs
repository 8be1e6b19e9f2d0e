//! Accepting TLS on a client listener ourselves, so that the `:authority` fix
//! ([`super::authority`]) sees the decrypted HTTP/2 rather than TLS records. The accept loop
//! never waits for a handshake: each connection's handshake runs in its own task (bounded
//! by [`HANDSHAKE_TIMEOUT`]), and finished ones are handed to the gRPC server through a
//! channel. The loop ends when the server drops the stream.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

use super::authority::AuthorityFix;
use crate::tls::HANDSHAKE_TIMEOUT;

/// A decrypted client connection, with its `:authority` fixed.
pub type Conn = AuthorityFix<TlsStream<TcpStream>>;

/// Connections whose handshake finished but the server has not picked up yet.
const READY: usize = 64;

/// The TLS connections accepted on `listener` with `config` (whose ALPN should offer
/// `h2`). Failed handshakes are logged and dropped; they never end the stream.
pub fn incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
) -> ReceiverStream<std::io::Result<Conn>> {
    let (tx, rx) = mpsc::channel(READY);
    let acceptor = TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = tx.closed() => return,
                a = listener.accept() => a,
            };
            let (sock, from) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "accepting a client connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // Small request/response RPCs: never let Nagle hold a reply back.
            let _ = sock.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(sock)).await {
                    Ok(Ok(tls)) => {
                        // The server is gone when this fails: the connection just closes.
                        let _ = tx.send(Ok(AuthorityFix::new(tls))).await;
                    }
                    Ok(Err(e)) => {
                        tracing::info!(%from, error = %e, "rejected client connection (TLS)")
                    }
                    Err(_) => tracing::info!(%from, "client TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}
