//! Media types and manifest walking: the children (manifests, config, layers) a manifest or index names.

use serde::Deserialize;

use super::Digest;

pub mod media_types {
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    pub const DOCKER_MANIFEST_LIST: &str =
        "application/vnd.docker.distribution.manifest.list.v2+json";
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    pub const OCTET_STREAM: &str = "application/octet-stream";
}

/// Manifests (and indexes) are served from `/manifests/`; everything else is a blob.
pub fn is_manifest_media_type(mt: &str) -> bool {
    use media_types::*;
    matches!(
        mt,
        OCI_INDEX | OCI_MANIFEST | DOCKER_MANIFEST_LIST | DOCKER_MANIFEST
    )
}

fn is_index(mt: &str) -> bool {
    mt == media_types::OCI_INDEX || mt == media_types::DOCKER_MANIFEST_LIST
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("child descriptor has an invalid digest: {0}")]
    Digest(#[from] super::DigestError),
}

#[derive(Deserialize)]
struct RawDescriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    size: i64,
}

#[derive(Deserialize)]
struct RawManifest {
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Vec<RawDescriptor>,
    config: Option<RawDescriptor>,
    #[serde(default)]
    layers: Vec<RawDescriptor>,
}

/// A child of a manifest: its digest, size and media type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Child {
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
}

/// The children a manifest or index references: for an index its manifests, for a manifest its
/// config and layers. `media_type` is the descriptor's type of `data` (the JSON's own `mediaType`
/// is used when the descriptor's is unknown).
pub fn children(media_type: &str, data: &[u8]) -> Result<Vec<Child>, ManifestError> {
    let raw: RawManifest = serde_json::from_slice(data)?;
    let effective = if is_manifest_media_type(media_type) {
        media_type
    } else {
        raw.media_type.as_deref().unwrap_or(media_type)
    };
    let descs: Vec<RawDescriptor> =
        if is_index(effective) || (!raw.manifests.is_empty() && raw.config.is_none()) {
            raw.manifests
        } else {
            raw.config.into_iter().chain(raw.layers).collect()
        };
    descs
        .into_iter()
        .map(|d| {
            Ok(Child {
                digest: d.digest.parse()?,
                size: u64::try_from(d.size).unwrap_or(0),
                media_type: d.media_type,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> String {
        format!("sha256:{}", hex::encode([n; 32]))
    }

    #[test]
    fn walks_manifest_and_index() {
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":10}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{}","size":20}}]}}"#,
            media_types::OCI_MANIFEST,
            d(1),
            d(2)
        );
        let c = children(media_types::OCI_MANIFEST, m.as_bytes()).unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].size, 10);
        assert_eq!(c[1].digest.to_string(), d(2));

        let i = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{}","digest":"{}","size":5,"platform":{{"architecture":"amd64","os":"linux"}}}},{{"mediaType":"{}","digest":"{}","size":6}}]}}"#,
            media_types::OCI_MANIFEST,
            d(3),
            media_types::OCI_MANIFEST,
            d(4)
        );
        // The descriptor's type may be unknown: the body's shape decides.
        let c = children("application/octet-stream", i.as_bytes()).unwrap();
        assert_eq!(c.iter().map(|c| c.size).collect::<Vec<_>>(), vec![5, 6]);
    }

    #[test]
    fn rejects_bad_manifests() {
        assert!(children(media_types::OCI_MANIFEST, b"not json").is_err());
        let bad = r#"{"config":{"digest":"sha256:nope","size":1},"layers":[]}"#;
        assert!(children(media_types::OCI_MANIFEST, bad.as_bytes()).is_err());
    }
}
