//! The plain HTTP paths of a member, answered alike on `--listen-metrics-urls` (etcd's flag)
//! and on the client port beside gRPC and the JSON gateway ([`respond`]): `/health` answers
//! `{"health":"true"}` when no alarm is active, a leader exists and a linearizable read
//! completes, as etcd's does; `/readyz` and `/livez` are etcd 3.6's probes (ready: as
//! `/health`; live: the process answers); `/version` answers etcd's
//! `{"etcdserver":…,"etcdcluster":…}` plus kvstore's own version (see [`crate::version`]);
//! `/metrics` gives the member's state in Prometheus text format. An https:// metrics URL is
//! served with the client TLS configuration, as etcd does.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::replica::Replica;

async fn health(member: &Replica) -> (StatusCode, String) {
    // As etcd 3.4: any active alarm makes the member unhealthy.
    let alarms = member.alarms();
    if !alarms.is_empty() {
        for a in &alarms {
            tracing::warn!(
                "/health error due to an alarm {}",
                crate::alarm::compact_text(a)
            );
        }
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "{\"health\":\"false\"}".into(),
        );
    }
    let has_leader = member.status().leader.load(Ordering::Relaxed) != 0;
    let read = tokio::time::timeout(Duration::from_secs(1), member.read_barrier()).await;
    if has_leader && matches!(read, Ok(Ok(()))) {
        (StatusCode::OK, "{\"health\":\"true\"}".into())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "{\"health\":\"false\"}".into(),
        )
    }
}

fn metrics(member: &Replica) -> String {
    crate::metrics::render(member)
}

/// The answer to a GET of `path` (any path: unknown ones answer 404 as Go's mux does).
pub(crate) async fn respond(member: &Replica, path: &str) -> Response<Full<Bytes>> {
    let (status, ctype, body) = match path {
        // etcd writes the JSON without a content type; Go's server sniffs it as text.
        "/health" => {
            let (status, body) = health(member).await;
            (status, "text/plain; charset=utf-8", body)
        }
        // etcd 3.6's probes (k8s style): the body is "ok", or which check failed.
        "/livez" => (StatusCode::OK, "text/plain; charset=utf-8", "ok".into()),
        "/readyz" => match health(member).await {
            (StatusCode::OK, _) => (StatusCode::OK, "text/plain; charset=utf-8", "ok".into()),
            (status, _) => (
                status,
                "text/plain; charset=utf-8",
                "[-]linearizable_read failed: reason withheld\nreadyz check failed\n".into(),
            ),
        },
        "/version" => (StatusCode::OK, "application/json", crate::version::json()),
        "/metrics" => (
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics(member),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "404 page not found\n".into(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(ctype),
    );
    resp
}

/// Serves [`respond`]'s paths on `listener` until the task is aborted; over TLS when
/// `tls` is given (an https:// metrics URL, which etcd serves with the client certificate
/// and client-cert-auth).
pub(crate) async fn serve(
    member: Arc<Replica>,
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "metrics listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let member = member.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            match acceptor {
                None => serve_connection(member, stream).await,
                Some(acceptor) => {
                    let handshake = tokio::time::timeout(
                        crate::tls::HANDSHAKE_TIMEOUT,
                        acceptor.accept(stream),
                    );
                    match handshake.await {
                        Ok(Ok(tls)) => serve_connection(member, tls).await,
                        Ok(Err(e)) => tracing::debug!(error = %e, "metrics TLS handshake failed"),
                        Err(_) => tracing::debug!("metrics TLS handshake timed out"),
                    }
                }
            }
        });
    }
}

async fn serve_connection<IO>(member: Arc<Replica>, io: IO)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req: Request<Incoming>| {
        let member = member.clone();
        async move { Ok::<_, Infallible>(respond(&member, req.uri().path()).await) }
    });
    if let Err(e) = http1::Builder::new()
        .serve_connection(TokioIo::new(io), svc)
        .await
    {
        tracing::debug!(error = %e, "metrics connection ended");
    }
}
