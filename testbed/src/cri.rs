//! A client of the Kubernetes Container Runtime Interface (CRI v1), the API the kubelet drives a
//! runtime with: what a kubelet would call on containerd's socket, for the tests that run
//! containerd's CRI plugin (`crictl` is not packaged for Debian 12). The messages are the subset
//! in `proto/cri.proto`, compiled at build time; the connection is gRPC over the runtime's unix
//! socket.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use anyhow::{Context as _, Result};
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

/// The generated messages and clients of package `runtime.v1`.
#[allow(clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("runtime.v1");
}

pub use v1::image_service_client::ImageServiceClient;
pub use v1::runtime_service_client::RuntimeServiceClient;

/// The runtime service's client, as [`clients`] returns it.
pub type Runtime = RuntimeServiceClient<Channel>;
/// The image service's client.
pub type Images = ImageServiceClient<Channel>;

/// Opens a gRPC channel to the runtime listening on unix socket `socket`.
pub async fn connect(socket: &Path) -> Result<Channel> {
    // The URI is required by the API and unused: every connection goes to the socket.
    Endpoint::from_static("http://[::1]:50051")
        .connect_with_connector(UnixConnector(socket.to_path_buf()))
        .await
        .with_context(|| format!("connecting to the CRI socket {}", socket.display()))
}

/// Both CRI services over one channel.
pub async fn clients(socket: &Path) -> Result<(Runtime, Images)> {
    let ch = connect(socket).await?;
    Ok((
        RuntimeServiceClient::new(ch.clone()),
        ImageServiceClient::new(ch),
    ))
}

/// A connector that dials a unix socket whatever URI it is given.
#[derive(Clone)]
struct UnixConnector(PathBuf);

type Connecting = Pin<
    Box<dyn std::future::Future<Output = std::io::Result<TokioIo<tokio::net::UnixStream>>> + Send>,
>;

impl tower_service::Service<Uri> for UnixConnector {
    type Response = TokioIo<tokio::net::UnixStream>;
    type Error = std::io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let path = self.0.clone();
        Box::pin(async move { Ok(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) })
    }
}
