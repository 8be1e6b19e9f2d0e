//! Calling the member's own gRPC services in process, as etcd's gateway calls its own gRPC
//! server: the request goes through the same tonic service stack a network client reaches
//! (limits, checks, errors), only without a socket. Messages travel as their protobuf bytes
//! ([`Raw`]), so one caller serves every method in the route table.

use std::future::Future;
use std::pin::Pin;

use bytes::{Buf, BufMut, Bytes};
use futures::Stream;
use hyper::http::uri::PathAndQuery;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::service::Routes;
use tonic::{Request, Status, Streaming};

/// A codec that passes protobuf bytes through untouched.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Raw;

impl Codec for Raw {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = Raw;
    type Decoder = Raw;

    fn encoder(&mut self) -> Raw {
        Raw
    }

    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// A boxed call: boxed where its lifetimes are concrete, as the compiler cannot prove tonic's
/// client futures `Send` for every lifetime.
type Call<T> = Pin<Box<dyn Future<Output = Result<T, Status>> + Send>>;

/// A client of `services` for one call of `/{service}/{method}`.
async fn client(
    services: Routes,
    service: &str,
    method: &str,
) -> Result<(tonic::client::Grpc<Routes>, PathAndQuery), Status> {
    let path = PathAndQuery::try_from(format!("/{service}/{method}"))
        .map_err(|e| Status::internal(format!("gateway route: {e}")))?;
    // etcd's gateway takes answers of any size (grpc.MaxCallRecvMsgSize(math.MaxInt32)).
    let mut grpc = tonic::client::Grpc::new(services).max_decoding_message_size(usize::MAX);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(format!("gateway: {e}")))?;
    Ok((grpc, path))
}

/// A unary call.
pub(crate) fn unary(
    services: Routes,
    service: &'static str,
    method: &'static str,
    req: Request<Bytes>,
) -> Call<Bytes> {
    Box::pin(async move {
        let (mut grpc, path) = client(services, service, method).await?;
        Ok(grpc.unary(req, path, Raw).await?.into_inner())
    })
}

/// A call whose answer is a stream (the request a single message or a stream of them).
pub(crate) fn streaming<S>(
    services: Routes,
    service: &'static str,
    method: &'static str,
    req: Request<S>,
) -> Call<Streaming<Bytes>>
where
    S: Stream<Item = Bytes> + Send + 'static,
{
    Box::pin(async move {
        let (mut grpc, path) = client(services, service, method).await?;
        Ok(grpc.streaming(req, path, Raw).await?.into_inner())
    })
}
