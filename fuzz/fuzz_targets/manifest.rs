//! Manifest and index walking: `oci::children` on any bytes, then the indexer's
//! `content::walk_image` over an in-memory store holding the input as an image's target next
//! to a few fixed blobs (a manifest and layers the seeds reference). Input: one byte choosing
//! the descriptor's media type, then the manifest bytes.
//! Properties: no panic; every child's digest prints and parses back to itself; the walk
//! succeeds, lists each blob once, starts with the target and stays within the store.
#![no_main]

use std::collections::HashSet;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use peermirror::content::{Image, MemorySource, walk_image};
use peermirror::oci::{Digest, children, media_types};

const MEDIA_TYPES: [&str; 7] = [
    media_types::OCI_MANIFEST,
    media_types::OCI_INDEX,
    media_types::DOCKER_MANIFEST,
    media_types::DOCKER_MANIFEST_LIST,
    "",
    media_types::OCTET_STREAM,
    "application/vnd.oci.image.config.v1+json",
];

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a tokio runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, manifest)) = data.split_first() else {
        return;
    };
    let media_type = MEDIA_TYPES[usize::from(pick) % MEDIA_TYPES.len()];

    if let Ok(kids) = children(media_type, manifest) {
        for c in &kids {
            let back: Result<Digest, _> = c.digest.to_string().parse();
            assert_eq!(back.ok(), Some(c.digest), "digest does not round-trip");
        }
    }

    // Fixed content the seeds point at: layers "a" and "b" (sha256 of those bytes) and one
    // manifest listing both, so an index seed walks two levels.
    let source = MemorySource::new();
    let a = source.add_blob("application/vnd.oci.image.layer.v1.tar", &b"a"[..]);
    let b = source.add_blob("application/vnd.oci.image.layer.v1.tar", &b"b"[..]);
    let inner = format!(
        r#"{{"schemaVersion":2,"config":{{"digest":"{}","size":1}},"layers":[{{"digest":"{}","size":1}}]}}"#,
        a.digest, b.digest
    );
    source.add_blob(media_types::OCI_MANIFEST, inner.into_bytes());
    let target = source.add_blob(media_type, manifest.to_vec());
    let image = Image {
        name: "registry.fuzz/image:latest".into(),
        target: target.clone(),
    };
    let walked = runtime()
        .block_on(walk_image(&source, &image))
        .expect("walking an in-memory store does not fail");
    assert_eq!(walked.target, target.digest);
    assert_eq!(walked.blobs.first().map(|d| d.digest), Some(target.digest));
    let mut seen = HashSet::new();
    for blob in &walked.blobs {
        assert!(seen.insert(blob.digest), "{} listed twice", blob.digest);
    }
    assert!(walked.blobs.len() <= 4, "more blobs than the store holds");
});
