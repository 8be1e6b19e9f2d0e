//! What the gateway answers besides a message: gRPC statuses as grpc-gateway 1.x (etcd 3.4's)
//! turns them into HTTP (status code and `{"error","message","code"}` body, or the
//! `{"error":{…}}` chunk that ends a stream), Go's plain-text errors, and the CORS headers
//! etcd adds to every answer on the client port.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};
use tonic::{Code, Status};

/// Every answer's body: whole, or a stream of chunks.
pub(crate) type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed_unsync()
}

/// The HTTP status etcd 3.4's grpc-gateway gives a gRPC code (its `HTTPStatusFromCode`, as
/// etcd 3.4.23 answers: FailedPrecondition is 412 there, not the 400 of later 1.x releases).
pub(crate) fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::REQUEST_TIMEOUT,
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::FailedPrecondition => StatusCode::PRECONDITION_FAILED,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// A response with etcd's headers for JSON.
pub(crate) fn json(status: StatusCode, body: Body) -> Response<Body> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// A gRPC answer's headers as the gateway forwards them (etcd's show grpc-go's content type).
pub(crate) fn grpc_metadata(resp: &mut Response<Body>) {
    resp.headers_mut().insert(
        "grpc-metadata-content-type",
        HeaderValue::from_static("application/grpc"),
    );
}

/// A JSON string literal.
fn quote(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// The error body grpc-gateway 1.x writes for a failed call, and its status code.
pub(crate) fn error(status: &Status) -> Response<Body> {
    let msg = quote(status.message());
    let body = format!(
        r#"{{"error":{msg},"message":{msg},"code":{}}}"#,
        status.code() as i32
    );
    json(http_status(status.code()), full(body))
}

/// The last chunk of a stream that failed (grpc-gateway 1.x's `{"error": StreamError}`, its
/// zero values left out as everywhere in the gateway's JSON).
pub(crate) fn stream_error(status: &Status) -> Bytes {
    let http = http_status(status.code());
    let mut fields = Vec::new();
    if status.code() != Code::Ok {
        fields.push(format!(r#""grpc_code":{}"#, status.code() as i32));
    }
    fields.push(format!(r#""http_code":{}"#, http.as_u16()));
    if !status.message().is_empty() {
        fields.push(format!(r#""message":{}"#, quote(status.message())));
    }
    fields.push(format!(
        r#""http_status":{}"#,
        quote(http.canonical_reason().unwrap_or(""))
    ));
    Bytes::from(format!(r#"{{"error":{{{}}}}}"#, fields.join(",")))
}

/// A plain-text error as Go's `http.Error` writes it (the gateway's 404 and 405).
pub(crate) fn text(status: StatusCode) -> Response<Body> {
    text_saying(status, status.canonical_reason().unwrap_or(""))
}

/// Like [`text`], saying `msg`.
pub(crate) fn text_saying(status: StatusCode, msg: &str) -> Response<Body> {
    let mut resp = Response::new(full(format!("{msg}\n")));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    resp
}

/// etcd's CORS headers (its default `--cors` is `*`), on every answer of the client port.
pub(crate) fn cors(resp: &mut Response<Body>) {
    let h = resp.headers_mut();
    h.insert(
        "access-control-allow-headers",
        HeaderValue::from_static("accept, content-type, authorization"),
    );
    h.insert(
        "access-control-allow-methods",
        HeaderValue::from_static("POST, GET, OPTIONS, PUT, DELETE"),
    );
    h.insert("access-control-allow-origin", HeaderValue::from_static("*"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_as_grpc_gateway_s() {
        assert_eq!(http_status(Code::OutOfRange), StatusCode::BAD_REQUEST);
        assert_eq!(
            http_status(Code::FailedPrecondition),
            StatusCode::PRECONDITION_FAILED
        );
        assert_eq!(
            http_status(Code::Unavailable),
            StatusCode::SERVICE_UNAVAILABLE
        );
        let chunk = stream_error(&Status::unknown("x"));
        assert_eq!(
            &chunk[..],
            br#"{"error":{"grpc_code":2,"http_code":500,"message":"x","http_status":"Internal Server Error"}}"#
        );
    }
}
