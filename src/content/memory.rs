//! [`MemorySource`]: an in-memory content source for tests, with images built from byte slices.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::broadcast;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::BroadcastStream;

use super::{ByteStream, ContentSource, Descriptor, EventStream, Image, SourceError, SourceEvent};
use crate::oci::Digest;
use crate::sync::MutexExt;

/// An in-memory content source for tests: blobs and images held in maps, events broadcast.
#[derive(Clone, Default)]
pub struct MemorySource {
    inner: Arc<Mutex<State>>,
    events: Arc<Mutex<Option<broadcast::Sender<SourceEvent>>>>,
}

#[derive(Default)]
struct State {
    blobs: HashMap<Digest, Bytes>,
    images: HashMap<String, Image>,
    /// When set, every call fails as if containerd were down.
    unavailable: bool,
}

/// Chunk size of reads, small so tests exercise multi-chunk streams.
const CHUNK: usize = 64 * 1024;

impl MemorySource {
    pub fn new() -> Self {
        Self::default()
    }

    fn emit(&self, ev: SourceEvent) {
        if let Some(tx) = self.events.locked().as_ref() {
            let _ = tx.send(ev);
        }
    }

    /// Store a blob and return its descriptor.
    pub fn add_blob(&self, media_type: &str, data: impl Into<Bytes>) -> Descriptor {
        let data = data.into();
        let digest = Digest::of(&data);
        let size = data.len() as u64;
        self.inner.locked().blobs.insert(digest, data);
        Descriptor {
            digest,
            size,
            media_type: media_type.to_string(),
        }
    }

    /// Store a blob and report it as committed, the way containerd 2.1+ does while a pull is
    /// still going (no image names it yet).
    pub fn commit_blob(&self, data: impl Into<Bytes>) -> Descriptor {
        let desc = self.add_blob("", data);
        self.emit(SourceEvent::ContentCommitted {
            digest: desc.digest,
            size: desc.size,
        });
        desc
    }

    /// Store a blob under a chosen digest (to simulate corrupt content).
    pub fn add_blob_as(&self, digest: Digest, data: impl Into<Bytes>) {
        self.inner.locked().blobs.insert(digest, data.into());
    }

    /// Build and store a single-platform OCI image (config + one layer per entry of `layers`)
    /// and name it `name`. Returns the manifest's descriptor.
    pub fn add_image(&self, name: &str, layers: &[&[u8]]) -> Descriptor {
        let manifest = self.add_manifest(name, "amd64", layers);
        self.put_image(name, manifest.clone());
        manifest
    }

    /// Store config, layers and manifest without naming an image (a platform of an index).
    pub fn add_manifest(&self, seed: &str, arch: &str, layers: &[&[u8]]) -> Descriptor {
        use crate::oci::media_types::OCI_MANIFEST;
        let config = self.add_blob(
            "application/vnd.oci.image.config.v1+json",
            format!(r#"{{"architecture":"{arch}","os":"linux","seed":"{seed}"}}"#),
        );
        let layer_descs: Vec<String> = layers
            .iter()
            .map(|l| {
                let d = self.add_blob("application/vnd.oci.image.layer.v1.tar", l.to_vec());
                descriptor_json(&d)
            })
            .collect();
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{},"layers":[{}]}}"#,
            descriptor_json(&config),
            layer_descs.join(",")
        );
        self.add_blob(OCI_MANIFEST, manifest)
    }

    /// Store an index over `manifests` (each with the given architecture) and name it `name`.
    pub fn add_index(&self, name: &str, manifests: &[(&str, Descriptor)]) -> Descriptor {
        use crate::oci::media_types::OCI_INDEX;
        let entries: Vec<String> = manifests
            .iter()
            .map(|(arch, d)| {
                format!(
                    r#"{{"mediaType":"{}","digest":"{}","size":{},"platform":{{"architecture":"{arch}","os":"linux"}}}}"#,
                    d.media_type, d.digest, d.size
                )
            })
            .collect();
        let index = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{}]}}"#,
            entries.join(",")
        );
        let desc = self.add_blob(OCI_INDEX, index);
        self.put_image(name, desc.clone());
        desc
    }

    pub fn remove_blob(&self, digest: &Digest) {
        self.inner.locked().blobs.remove(digest);
        self.emit(SourceEvent::ContentDeleted(*digest));
    }

    pub fn put_image(&self, name: &str, target: Descriptor) {
        self.inner.locked().images.insert(
            name.to_string(),
            Image {
                name: name.to_string(),
                target,
            },
        );
        self.emit(SourceEvent::ImageChanged(name.to_string()));
    }

    pub fn delete_image(&self, name: &str) {
        self.inner.locked().images.remove(name);
        self.emit(SourceEvent::ImageDeleted(name.to_string()));
    }

    /// The stored bytes of a blob.
    pub fn blob(&self, digest: &Digest) -> Option<Bytes> {
        self.inner.locked().blobs.get(digest).cloned()
    }

    pub fn set_unavailable(&self, down: bool) {
        self.inner.locked().unavailable = down;
        if down {
            // Like a daemon restart: open subscriptions end.
            *self.events.locked() = None;
        }
    }

    fn check(&self) -> Result<(), SourceError> {
        if self.inner.locked().unavailable {
            Err(SourceError::Unavailable(
                "memory source set unavailable".into(),
            ))
        } else {
            Ok(())
        }
    }
}

fn descriptor_json(d: &Descriptor) -> String {
    format!(
        r#"{{"mediaType":"{}","digest":"{}","size":{}}}"#,
        d.media_type, d.digest, d.size
    )
}

#[async_trait]
impl ContentSource for MemorySource {
    async fn list_images(&self) -> Result<Vec<Image>, SourceError> {
        self.check()?;
        Ok(self.inner.locked().images.values().cloned().collect())
    }

    async fn get_image(&self, name: &str) -> Result<Option<Image>, SourceError> {
        self.check()?;
        Ok(self.inner.locked().images.get(name).cloned())
    }

    async fn stat(&self, digest: &Digest) -> Result<Option<u64>, SourceError> {
        self.check()?;
        Ok(self
            .inner
            .locked()
            .blobs
            .get(digest)
            .map(|b| b.len() as u64))
    }

    async fn read(
        &self,
        digest: &Digest,
        offset: u64,
        len: Option<u64>,
    ) -> Result<ByteStream, SourceError> {
        self.check()?;
        let data = self
            .inner
            .locked()
            .blobs
            .get(digest)
            .cloned()
            .ok_or(SourceError::NotFound(*digest))?;
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(data.len());
        let end = match len {
            Some(l) => start.saturating_add(usize::try_from(l).unwrap_or(usize::MAX)),
            None => data.len(),
        }
        .min(data.len());
        let slice = data.slice(start..end);
        let chunks: Vec<std::io::Result<Bytes>> = (0..slice.len())
            .step_by(CHUNK)
            .map(|i| Ok(slice.slice(i..(i + CHUNK).min(slice.len()))))
            .collect();
        Ok(Box::pin(tokio_stream::iter(chunks)))
    }

    async fn subscribe(&self) -> Result<EventStream, SourceError> {
        self.check()?;
        let mut guard = self.events.locked();
        let tx = guard.get_or_insert_with(|| broadcast::channel(1024).0);
        let rx = BroadcastStream::new(tx.subscribe());
        Ok(Box::pin(rx.map(|r| {
            r.map_err(|e| SourceError::Unavailable(format!("event stream lagged: {e}")))
        })))
    }
}
