//! gRPC adapters: thin translations between the etcd v3 services and the `Member`
//! facade. Errors become gRPC statuses only through `From<Error> for Status`. The client
//! port serves these services and, on the same listeners, the JSON gateway
//! ([`crate::gateway`]), which calls them in process ([`services`]); [`incoming`] tells the
//! two kinds of connection apart.

/// For a connection wrapper `$t<S>` that rewrites or replays what is read from its `inner`
/// stream: writes, flushes, shutdown and the connection's info go straight to `inner`.
macro_rules! write_through {
    ($t:ident) => {
        impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for $t<S> {
            fn poll_write(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
            }

            fn poll_flush(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.get_mut().inner).poll_flush(cx)
            }

            fn poll_shutdown(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
            }

            fn poll_write_vectored(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.inner.is_write_vectored()
            }
        }

        impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected for $t<S> {
            type ConnectInfo = S::ConnectInfo;

            fn connect_info(&self) -> Self::ConnectInfo {
                self.inner.connect_info()
            }
        }
    };
}
use write_through;

mod auth;
pub(crate) mod authority;
pub(crate) mod caller;
mod cluster;
mod incoming;
mod kv;
mod lease;
pub(crate) mod validate;
mod watch;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::service::Routes;
use tonic::transport::server::Router;

use crate::error::{Error, Result};
use crate::gateway::Gateway;
use crate::proto::etcdserverpb::{
    auth_server::AuthServer, cluster_server::ClusterServer, kv_server::KvServer,
    lease_server::LeaseServer, maintenance_server::MaintenanceServer, watch_server::WatchServer,
};
use crate::replica::Replica;

/// gRPC framing on top of the largest request (etcd: max-request-bytes + 512 KiB).
pub(crate) const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;
/// What tonic itself will decode. Messages between the etcd limit and this one are
/// refused by `check_size` with grpc-go's code and message, as etcd refuses them.
const DECODE_LIMIT: usize = 64 * 1024 * 1024;

/// Refuses a message over the gRPC receive limit as etcd (grpc-go) does.
pub(crate) fn check_size(
    member: &Replica,
    msg: &impl prost::Message,
) -> std::result::Result<(), tonic::Status> {
    let len = msg.encoded_len();
    let max = member.max_request_bytes + GRPC_OVERHEAD_BYTES;
    if len > max {
        return Err(tonic::Status::resource_exhausted(format!(
            "grpc: received message larger than max ({len} vs. {max})"
        )));
    }
    Ok(())
}

/// The etcd v3 services of `member`: what the client port serves over gRPC, and what the
/// JSON gateway calls. A service added here is served both ways.
pub(crate) fn services(member: &Arc<Replica>) -> Routes {
    let max = DECODE_LIMIT;
    Routes::builder()
        .add_service(
            KvServer::new(kv::KvService::new(member.clone())).max_decoding_message_size(max),
        )
        .add_service(
            WatchServer::new(watch::WatchService::new(member.clone()))
                .max_decoding_message_size(max),
        )
        .add_service(
            LeaseServer::new(lease::LeaseService::new(member.clone()))
                .max_decoding_message_size(max),
        )
        .add_service(ClusterServer::new(cluster::ClusterService::new(
            member.clone(),
        )))
        .add_service(MaintenanceServer::new(cluster::MaintenanceService::new(
            member.clone(),
        )))
        .add_service(AuthServer::new(auth::AuthService::new(member.clone())))
        .clone()
        .routes()
}

/// The gRPC server of the client port: `services`, with HTTP/2 requests that are not gRPC
/// (e.g. curl's JSON over https, which ALPN puts on HTTP/2) answered by the gateway, as
/// etcd answers them.
fn routes(
    member: &Arc<Replica>,
    services: Routes,
    gateway: Arc<Gateway>,
) -> Router<tower_layer::Stack<crate::metrics::GrpcLayer, tower_layer::Identity>> {
    let fallback = move |req: axum::extract::Request| {
        let gateway = gateway.clone();
        async move {
            let grpc = req
                .headers()
                .get(hyper::header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
            if grpc {
                // A gRPC method nobody serves, as tonic answers it.
                let (parts, ()) = tonic::Status::unimplemented("")
                    .into_http::<()>()
                    .into_parts();
                return axum::response::Response::from_parts(parts, axum::body::Body::empty());
            }
            let req = crate::gateway::incoming(req);
            gateway.handle(req).await.map(axum::body::Body::new)
        }
    };
    let router = services
        .into_axum_router()
        .layer(axum::middleware::from_fn_with_state(
            member.clone(),
            learner_gate,
        ))
        .fallback(fallback);
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        // The bounds the `:authority` adapter enforces are the ones the server advertises.
        .max_frame_size(Some(authority::MAX_FRAME as u32))
        .http2_max_header_list_size(Some(authority::MAX_HEADER_LIST as u32))
        .max_concurrent_streams(Some(member.max_concurrent_streams))
        // grpc_server_started/handled/msg_*: every gRPC call on the client port counted.
        .layer(crate::metrics::GrpcLayer::new(
            member.shared.metrics.clone(),
        ))
        .add_routes(Routes::from(router))
}

/// The gRPC calls a learner answers (etcd 3.4's `isRPCSupportedForLearner`; Range only when
/// serializable, which the KV service checks).
const LEARNER_RPCS: [&str; 2] = ["/etcdserverpb.KV/Range", "/etcdserverpb.Maintenance/Status"];

/// etcd 3.4's learner interceptors: while this member is a learner, every other gRPC call
/// (streams included) is answered "etcdserver: rpc not supported for learner" (Unavailable).
async fn learner_gate(
    axum::extract::State(member): axum::extract::State<Arc<Replica>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if member.is_learner() && !LEARNER_RPCS.contains(&req.uri().path()) {
        let (parts, ()) = tonic::Status::from(Error::NotSupportedForLearner)
            .into_http::<()>()
            .into_parts();
        return axum::response::Response::from_parts(parts, axum::body::Body::empty());
    }
    next.run(req).await
}

/// Serves the client API on every listener (over TLS where it has a TLS configuration)
/// until `shutdown` fires. TLS is terminated here, below the `:authority` fix, rather
/// than by tonic, which would put the handshake above it.
pub(crate) async fn serve(
    member: Arc<Replica>,
    listeners: Vec<(TcpListener, Option<Arc<rustls::ServerConfig>>)>,
    shutdown: oneshot::Receiver<()>,
) -> Result<()> {
    let (stop_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let services = services(&member);
    let gateway = Gateway::new(member.clone(), services.clone());
    let mut tasks = Vec::new();
    for (l, tls) in listeners {
        let router = routes(&member, services.clone(), gateway.clone());
        let mut stop = stop_tx.subscribe();
        let stopped = async move {
            let _ = stop.recv().await;
        };
        let (gw, stop) = (gateway.clone(), stop_tx.clone());
        tasks.push(match tls {
            Some(tls) => {
                let incoming = incoming::tls(l, tls, gw, stop);
                tokio::spawn(router.serve_with_incoming_shutdown(incoming, stopped))
            }
            None => {
                let incoming = incoming::plain(l, gw, stop);
                tokio::spawn(router.serve_with_incoming_shutdown(incoming, stopped))
            }
        });
    }
    let _ = shutdown.await;
    let _ = stop_tx.send(());
    for t in tasks {
        t.await
            .map_err(|e| Error::Serve(format!("client listener task: {e}")))?
            .map_err(|e| Error::Serve(format!("gRPC server: {e}")))?;
    }
    Ok(())
}
