//! gRPC channels over unix sockets: the admin socket and containerd's CRI socket.

use std::path::Path;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

/// Connect now (not lazily) to the gRPC server on `socket`, failing within `connect_timeout` if
/// nobody listens; every call on the channel is bounded by `call_timeout`.
pub async fn connect_unix(
    socket: &Path,
    connect_timeout: Duration,
    call_timeout: Duration,
) -> Result<Channel, tonic::transport::Error> {
    let p = socket.to_path_buf();
    // The URI is required by tonic but unused: the connector below ignores it.
    Endpoint::from_static("http://[::]:50051")
        .connect_timeout(connect_timeout)
        .timeout(call_timeout)
        .connect_with_connector(tower::service_fn(move |_| {
            let p = p.clone();
            async move {
                let s = tokio::net::UnixStream::connect(p).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
            }
        }))
        .await
}
