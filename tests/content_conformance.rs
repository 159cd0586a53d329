//! One conformance suite for every [`ContentSource`]: the in-memory fake and real containerd
//! (over gRPC, and through its content directory) must index and read the same fixture images
//! the same way.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use futures_util::TryStreamExt;
use peermirror::containerd::ContainerdSource;
use peermirror::content::{ContentSource, Descriptor, Index, Indexer, MemorySource};
use peermirror::oci::{Digest, TagKey};
use tokio_util::sync::CancellationToken;

use common::{Containerd, FixtureImage, Registry, fixture};

const HOST: &str = "127.0.0.1:5000";

async fn read_all(
    source: &dyn ContentSource,
    d: &Digest,
    offset: u64,
    len: Option<u64>,
) -> Vec<u8> {
    let s = source.read(d, offset, len).await.unwrap();
    let chunks: Vec<bytes::Bytes> = s.try_collect().await.unwrap();
    chunks.concat()
}

/// The suite. `images` are (containerd image name, fixture); `delete` removes an image from
/// the source by name (and the suite then expects the index to follow).
async fn conformance(
    source: Arc<dyn ContentSource>,
    images: &[(String, FixtureImage)],
    delete: Option<&dyn Fn(&str)>,
) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let index = Arc::new(Index::new());
    let indexer = Indexer::new(source.clone(), index.clone());
    let mut ready = indexer.readiness();
    let stop = CancellationToken::new();
    let task = tokio::spawn(indexer.run(stop.clone()));
    tokio::time::timeout(Duration::from_secs(20), ready.wait_for(|r| r.is_ready()))
        .await
        .expect("index never became ready")
        .unwrap();

    for (name, img) in images {
        let key = TagKey::from_image_name(name).unwrap();
        assert_eq!(
            index.resolve(&key).map(|d| d.to_string()),
            Some(img.root.digest.clone()),
            "{name}"
        );
        let root = index.stat(&img.root.digest.parse().unwrap()).unwrap();
        assert_eq!(
            root.media_type, img.root.media_type,
            "root media type of {name}"
        );
        for d in img.pulled_digests() {
            let digest: Digest = d.parse().unwrap();
            let data = img.read_blob(&d);
            let desc = index
                .stat(&digest)
                .unwrap_or_else(|| panic!("{name}: {d} not indexed"));
            assert_eq!(desc.size, data.len() as u64, "{d}");
            assert_eq!(source.stat(&digest).await.unwrap(), Some(data.len() as u64));
            let all = read_all(source.as_ref(), &digest, 0, None).await;
            assert!(all == data, "{name}: full read of {d} differs");
            // Ranges, including ones that straddle the 1 MiB read chunk.
            let len = data.len() as u64;
            for (off, n) in [
                (0, 1),
                (len / 2, (len / 3).max(1)),
                (len.saturating_sub(7), 7),
                ((1 << 20) - 3, 9),
            ] {
                if off >= len {
                    continue;
                }
                let n = n.min(len - off);
                let part = read_all(source.as_ref(), &digest, off, Some(n)).await;
                assert!(
                    part == data[off as usize..(off + n) as usize],
                    "{d} range {off}+{n}"
                );
            }
        }
        // Platforms that were not pulled are skipped, not indexed.
        for (arch, m) in img.platforms() {
            if arch != common::host_arch() {
                assert!(
                    index.stat(&m.digest.parse().unwrap()).is_none(),
                    "{arch} manifest indexed"
                );
            }
        }
    }
    let absent = Digest::of(b"absent from every store");
    assert!(index.stat(&absent).is_none());
    assert_eq!(source.stat(&absent).await.unwrap(), None);
    assert!(
        source
            .read(&absent, 0, None)
            .await
            .err()
            .unwrap()
            .is_not_found()
    );

    if let Some(delete) = delete {
        let (name, img) = &images[0];
        delete(name);
        let key = TagKey::from_image_name(name).unwrap();
        let gone = common::wait_until_async(Duration::from_secs(10), || {
            let index = index.clone();
            let key = key.clone();
            async move { index.resolve(&key).is_none() }
        })
        .await;
        assert!(gone, "deleted image still indexed");
        assert!(
            index
                .stat(&img.host_manifest().descriptor.digest.parse().unwrap())
                .is_none()
        );
    }
    stop.cancel();
    task.await.unwrap();
}

fn fixtures() -> Vec<FixtureImage> {
    ["big", "multi", "multiarch"]
        .into_iter()
        .map(fixture)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "e2e: builds fixture images with umoci; run by scripts/test.sh"]
async fn memory_source_conforms() {
    let src = MemorySource::new();
    let mut images = Vec::new();
    for img in fixtures() {
        for d in img.pulled_digests() {
            src.add_blob_as(d.parse().unwrap(), img.read_blob(&d));
        }
        let name = img.reference(HOST);
        src.put_image(
            &name,
            Descriptor {
                digest: img.root.digest.parse().unwrap(),
                size: img.root.size,
                media_type: img.root.media_type.clone(),
            },
        );
        images.push((name, img));
    }
    let s2 = src.clone();
    conformance(
        Arc::new(src),
        &images,
        Some(&move |n: &str| s2.delete_image(n)),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "e2e: needs root + containerd + docker-registry; run by scripts/test.sh"]
async fn containerd_source_conforms() {
    let registry = Registry::start();
    registry.push_fixtures();
    let ctrd = Containerd::start("conformance");
    let mut images = Vec::new();
    for img in fixtures() {
        let name = img.reference(&registry.host());
        ctrd.pull_ok(&name, None, true);
        images.push((name, img));
    }
    // gRPC reads, then content-dir reads, then (content dir again) with an image deleted.
    let grpc = ContainerdSource::new(ctrd.socket(), "k8s.io", None).unwrap();
    conformance(Arc::new(grpc), &images, None).await;
    let dir = ContainerdSource::new(ctrd.socket(), "k8s.io", Some(ctrd.content_dir())).unwrap();
    conformance(Arc::new(dir.clone()), &images, None).await;
    let c2 = &ctrd;
    conformance(
        Arc::new(dir),
        &images,
        Some(&move |n: &str| {
            c2.ctr_ok(&["images", "rm", "--sync", n]);
        }),
    )
    .await;
}
