//! etcd 3.4's HTTP/JSON gateway, on the client port beside gRPC: `POST /v3/<path>` (and
//! `/v3beta/<path>`) with a JSON request message answers the JSON response message, as
//! grpc-gateway 1.x does in etcd. Each path calls the member's own gRPC service in process
//! ([`call`]), so every check, limit and error of the gRPC API applies unchanged; the
//! `Authorization` header goes along as the gRPC `token` metadata (a client certificate
//! cannot name the user here; see [`Gateway::handle`]'s refusal). Streaming methods (Watch,
//! LeaseKeepAlive) read a stream of JSON messages from the request body and answer
//! newline-separated `{"result":…}` objects. Any other path is [`crate::http::respond`]'s
//! (`/health`, `/version`, `/metrics`, `/readyz`, `/livez`).
//!
//! - [`routes`]: the paths and the methods they call;
//! - [`json`]: messages to and from JSON; [`body`]: reading request bodies, bounded;
//! - [`reply`]: statuses, error bodies and headers as etcd's gateway writes them.

mod body;
mod call;
mod json;
mod reply;
mod routes;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::header::AUTHORIZATION;
use hyper::http::request::Parts;
use hyper::{Method, Request, Response, StatusCode};
use prost_reflect::MethodDescriptor;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::Routes;

pub(crate) use reply::Body;

use crate::replica::Replica;
use routes::Route;

/// Response chunks a stream holds for a client that is not reading (the gRPC stream behind it
/// then waits, as it waits for a slow gRPC client).
const STREAM_QUEUE: usize = 4;
/// Request messages a stream holds for the gRPC call.
const REQUEST_QUEUE: usize = 4;

/// The gateway of one member.
pub(crate) struct Gateway {
    member: Arc<Replica>,
    /// The member's gRPC services, called in process.
    services: Routes,
    /// The longest request body or streamed message taken: a request message of etcd's
    /// `--max-request-bytes` written as JSON (base64 grows bytes by a third) with room to spare.
    limit: usize,
}

impl Gateway {
    pub(crate) fn new(member: Arc<Replica>, services: Routes) -> Arc<Gateway> {
        let limit = 2 * (member.max_request_bytes + crate::grpc::GRPC_OVERHEAD_BYTES);
        Arc::new(Gateway {
            member,
            services,
            limit,
        })
    }

    /// The answer to one HTTP request (of either HTTP version; see [`incoming`]), with etcd's
    /// CORS headers.
    pub(crate) fn handle(
        self: Arc<Self>,
        req: Request<body::Incoming>,
    ) -> Pin<Box<dyn Future<Output = Response<Body>> + Send>> {
        // Boxed here, where its lifetimes are concrete: the compiler cannot prove the future
        // `Send` for every lifetime where the HTTP servers require it.
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            if let Some(refused) = self.cert_name_refused(&parts) {
                return refused;
            }
            let mut resp = self.route(parts, body).await;
            reply::cors(&mut resp);
            resp
        })
    }

    /// etcd's refusal of a `/v3/` request whose client certificate has a Common Name while
    /// client certificates name users and authentication is on: the gateway's calls cannot
    /// run as that name ([`crate::grpc::caller`]), and etcd says so rather than run them as
    /// nobody. Answered before anything else, without CORS headers, as etcd does.
    fn cert_name_refused(&self, parts: &Parts) -> Option<Response<Body>> {
        let path = parts.uri.path();
        if !self.member.client_cert_auth
            || !(path.starts_with("/v3/") || path.starts_with("/v3beta/"))
        {
            return None;
        }
        let name = crate::grpc::caller::cert_name(parts.extensions.get())?;
        if name.is_empty() || !self.member.state().read().auth.enabled() {
            return None;
        }
        Some(reply::text_saying(
            StatusCode::BAD_REQUEST,
            "CommonName of client sending a request against gateway will be ignored and not used as expected",
        ))
    }

    async fn route(self: Arc<Self>, parts: Parts, body: body::Incoming) -> Response<Body> {
        if parts.method == Method::OPTIONS {
            // etcd answers every preflight request itself.
            return Response::new(reply::full(Bytes::new()));
        }
        let path = parts.uri.path();
        let Some(rest) = path
            .strip_prefix("/v3/")
            .or_else(|| path.strip_prefix("/v3beta/"))
        else {
            let (member, path) = (self.member.clone(), path.to_string());
            let plain: Pin<Box<dyn Future<Output = _> + Send>> =
                Box::pin(async move { crate::http::respond(&member, &path).await });
            return plain.await.map(|b| b.boxed_unsync());
        };
        let Some(route) = routes::find(rest) else {
            return reply::text(StatusCode::NOT_FOUND);
        };
        if parts.method != Method::POST {
            return reply::text(StatusCode::METHOD_NOT_ALLOWED);
        }
        let method = match json::method(route.service, route.method) {
            Some(m) => m,
            None => {
                return reply::error(&Status::unimplemented(format!(
                    "unknown service {}",
                    route.service
                )));
            }
        };
        let result = if method.is_client_streaming() {
            self.client_streaming(route, method, parts, body).await
        } else {
            self.single(route, method, parts, body).await
        };
        result.unwrap_or_else(|status| reply::error(&unknown_service(route, status)))
    }

    /// A call with one request message (its answer one message, or a stream for Snapshot).
    async fn single(
        self: Arc<Self>,
        route: Route,
        method: MethodDescriptor,
        parts: Parts,
        body: body::Incoming,
    ) -> Result<Response<Body>, Status> {
        let bytes = body::whole(body, self.limit).await?;
        let value = json::first_value(&bytes)
            .map_err(Status::invalid_argument)?
            .unwrap_or_else(|| serde_json::Value::Object(Default::default()));
        let msg = json::encode(&method.input(), value).map_err(Status::invalid_argument)?;
        if method.is_server_streaming() {
            let stream = tokio_stream::once(msg);
            let answers = call::streaming(
                self.services.clone(),
                route.service,
                route.method,
                request(&parts.headers, stream),
            )
            .await?;
            return Ok(stream_response(&method, answers).await);
        }
        let answer = call::unary(
            self.services.clone(),
            route.service,
            route.method,
            request(&parts.headers, msg),
        )
        .await?;
        let out = json::decode(&method.output(), &answer).map_err(Status::internal)?;
        let mut resp = reply::json(StatusCode::OK, reply::full(out));
        reply::grpc_metadata(&mut resp);
        Ok(resp)
    }

    /// A call whose request messages are the JSON objects of the body, in turn. As grpc-gateway,
    /// the first is read before anything is answered (one that does not read fails the call
    /// with Unknown); the rest are forwarded as they come, and the first that does not read
    /// ends the request stream.
    async fn client_streaming(
        self: Arc<Self>,
        route: Route,
        method: MethodDescriptor,
        parts: Parts,
        body: body::Incoming,
    ) -> Result<Response<Body>, Status> {
        let input = method.input();
        let mut values = body::Values::new(body, self.limit);
        let (tx, rx) = mpsc::channel::<Bytes>(REQUEST_QUEUE);
        match values.next().await.map_err(Status::unknown)? {
            Some(v) => {
                let msg = json::encode(&input, v).map_err(Status::unknown)?;
                // The receiver is held just below.
                let _ = tx.send(msg).await;
                let hold_open = route.hold_open;
                tokio::spawn(async move {
                    loop {
                        let msg = match values.next().await {
                            Ok(Some(v)) => json::encode(&input, v),
                            Ok(None) => break,
                            Err(e) => Err(e),
                        };
                        match msg {
                            Ok(m) => {
                                if tx.send(m).await.is_err() {
                                    return;
                                }
                            }
                            Err(e) => {
                                tracing::debug!(error = %e, "gateway: a streamed request does not read");
                                break;
                            }
                        }
                    }
                    if hold_open {
                        tx.closed().await;
                    }
                });
            }
            None if route.hold_open => {
                tokio::spawn(async move { tx.closed().await });
            }
            None => drop(tx),
        }
        let answers = call::streaming(
            self.services.clone(),
            route.service,
            route.method,
            request(&parts.headers, ReceiverStream::new(rx)),
        )
        .await?;
        Ok(stream_response(&method, answers).await)
    }
}

/// A request of any HTTP server, as [`Gateway::handle`] takes it.
pub(crate) fn incoming<B>(req: Request<B>) -> Request<body::Incoming>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<body::BoxError>,
{
    req.map(|b| b.map_err(Into::into).boxed_unsync())
}

/// grpc-go's message for a service no server registered (tonic's is empty).
fn unknown_service(route: Route, status: Status) -> Status {
    if status.code() == tonic::Code::Unimplemented && status.message().is_empty() {
        Status::unimplemented(format!("unknown service {}", route.service))
    } else {
        status
    }
}

/// A gRPC request carrying `msg` and the metadata etcd's gateway forwards: the
/// `Authorization` header, as `token` (what etcd's server reads) and as `authorization`
/// (grpc-gateway's own name for it, which etcd reads too).
fn request<T>(headers: &hyper::HeaderMap, msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    if let Some(v) = headers.get(AUTHORIZATION)
        && let Ok(v) = AsciiMetadataValue::try_from(v.as_bytes())
    {
        req.metadata_mut().insert("token", v.clone());
        req.metadata_mut().insert("authorization", v);
    }
    req
}

/// The answer to a streaming call: each message as a `{"result":…}` line, flushed as it
/// comes; an error ends the stream with grpc-gateway's `{"error":…}` chunk. Nothing is sent
/// before the first message or error, and an error that comes first sets the status code.
async fn stream_response(
    method: &MethodDescriptor,
    mut answers: tonic::Streaming<Bytes>,
) -> Response<Body> {
    let output = method.output();
    let chunk = move |r: Result<Option<Bytes>, Status>| -> Option<Result<Bytes, Bytes>> {
        match r {
            Ok(None) => None,
            Ok(Some(m)) => Some(match json::decode(&output, &m) {
                Ok(json) => {
                    let mut line = Vec::with_capacity(json.len() + 12);
                    line.extend_from_slice(b"{\"result\":");
                    line.extend_from_slice(&json);
                    line.extend_from_slice(b"}\n");
                    Ok(Bytes::from(line))
                }
                Err(e) => Err(reply::stream_error(&Status::internal(e))),
            }),
            Err(s) => Some(Err(reply::stream_error(&s))),
        }
    };
    let first = answers.message().await;
    let status = match &first {
        Err(s) => reply::http_status(s.code()),
        Ok(_) => StatusCode::OK,
    };
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(STREAM_QUEUE);
    tokio::spawn(async move {
        let mut next = first;
        loop {
            match chunk(next) {
                None => return,
                Some(Ok(line)) => {
                    if tx.send(Ok(Frame::data(line))).await.is_err() {
                        return;
                    }
                }
                Some(Err(last)) => {
                    let _ = tx.send(Ok(Frame::data(last))).await;
                    return;
                }
            }
            next = tokio::select! {
                m = answers.message() => m,
                // The client went away: drop the call.
                _ = tx.closed() => return,
            };
        }
    });
    let mut resp = reply::json(
        status,
        StreamBody::new(ReceiverStream::new(rx)).boxed_unsync(),
    );
    if status == StatusCode::OK {
        reply::grpc_metadata(&mut resp);
    }
    resp
}
