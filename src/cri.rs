//! A small client for the kubelet's image pull: CRI `runtime.v1.ImageService` on containerd's
//! socket. peermirror itself never pulls; the end-to-end tests use this to pull the way a
//! kubelet does (the containerd daemon fetches, through `hosts.toml`, not the `ctr` client).

use std::path::Path;
use std::time::Duration;

use tonic::transport::Channel;

#[allow(clippy::all, missing_docs)]
mod proto {
    tonic::include_proto!("runtime.v1");
}

pub use proto::image_service_client::ImageServiceClient;
pub use proto::{
    ImageSpec, ImageStatusRequest, ImageStatusResponse, PullImageRequest, PullImageResponse,
    RemoveImageRequest,
};

#[derive(Debug, thiserror::Error)]
pub enum CriError {
    #[error("cannot connect to the CRI socket {path}: {source}")]
    Connect {
        path: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("CRI {call} of {image} failed: {source}")]
    Call {
        call: &'static str,
        image: String,
        #[source]
        source: tonic::Status,
    },
}

/// The kubelet's view of containerd's image service.
pub struct Cri {
    client: ImageServiceClient<Channel>,
}

impl Cri {
    /// Connect to the CRI service on containerd's socket (the CRI plugin must be enabled).
    pub async fn connect(socket: &Path, timeout: Duration) -> Result<Self, CriError> {
        let channel = crate::grpc::connect_unix(socket, Duration::from_secs(2), timeout)
            .await
            .map_err(|source| CriError::Connect {
                path: socket.display().to_string(),
                source,
            })?;
        Ok(Cri {
            client: ImageServiceClient::new(channel),
        })
    }

    /// `PullImage` as the kubelet sends it (no credentials); returns the image reference
    /// containerd reports (the image id, `sha256:<config digest>`).
    pub async fn pull(&mut self, image: &str) -> Result<String, CriError> {
        let req = PullImageRequest {
            image: Some(spec(image)),
            auth: None,
        };
        let resp = self
            .client
            .pull_image(req)
            .await
            .map_err(|source| CriError::Call {
                call: "PullImage",
                image: image.to_string(),
                source,
            })?;
        Ok(resp.into_inner().image_ref)
    }

    /// The image's id and repo digests, or `None` if containerd does not have it.
    pub async fn status(&mut self, image: &str) -> Result<Option<proto::Image>, CriError> {
        let req = ImageStatusRequest {
            spec: Some(spec(image)),
            verbose: false,
        };
        let resp = self
            .client
            .image_status(req)
            .await
            .map_err(|source| CriError::Call {
                call: "ImageStatus",
                image: image.to_string(),
                source,
            })?;
        Ok(resp.into_inner().image)
    }
}

fn spec(image: &str) -> ImageSpec {
    ImageSpec {
        image: image.to_string(),
        annotations: Default::default(),
    }
}
