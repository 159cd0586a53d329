//! Upload limits through the daemon (issue 22, item 10): `--max-concurrent-uploads` answers a
//! GET beyond it 503 with `Retry-After` (HEADs take no slot) until a slot is free again, and
//! `--max-egress-bps` paces a body to the rate after one second's burst. Every other test runs
//! with both set to 0.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use peermirror::content::MemorySource;
use peermirror::daemon::{Config, Routing};
use peermirror::mirror::MirrorConfig;
use peermirror::oci::Digest;
use support::{Node, client, config, pattern, start_on, wait_ready};
use tokio::net::TcpListener;

const MIB: usize = 1024 * 1024;

/// A node (no routing) serving one image whose only layer is `layer`; the layer's blob URL.
async fn node_with(layer: &[u8], tweak: impl FnOnce(&mut Config)) -> (Node, String) {
    let source = MemorySource::new();
    source.add_image("127.0.0.1:5000/test/app:v1", &[layer]);
    let mut cfg = config(Routing::Off, MirrorConfig::default());
    tweak(&mut cfg);
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let node = start_on(l, source, cfg).await;
    wait_ready(&node, true).await;
    let url = format!("{}/v2/test/app/blobs/{}", node.base, Digest::of(layer));
    (node, url)
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn uploads_beyond_the_cap_are_answered_503_with_retry_after() {
    // Large enough that an unread body stays in the socket buffers, holding its slot.
    let layer = pattern(32 * MIB, 3);
    let (node, url) = node_with(&layer, |c| c.max_uploads = 1).await;

    let first = client().get(&url).send().await.unwrap();
    assert_eq!(first.status(), 200);
    // The first body is still being sent: a second GET finds no slot.
    let second = client().get(&url).send().await.unwrap();
    assert_eq!(second.status(), 503);
    assert_eq!(
        second
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1"),
        "{:?}",
        second.headers()
    );
    let body: serde_json::Value = serde_json::from_slice(&second.bytes().await.unwrap()).unwrap();
    assert_eq!(body["errors"][0]["code"], "UNAVAILABLE", "{body}");
    // A HEAD sends no body and takes no slot.
    assert_eq!(client().head(&url).send().await.unwrap().status(), 200);
    let m = node.metrics().await;
    assert!(
        metric(&m, "peermirror_uploads_rejected_total") >= 1.0,
        "{m}"
    );

    // Once the first upload ends (its client went away), the slot is free again.
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = client().get(&url).send().await.unwrap();
        if r.status() == 200 {
            assert_eq!(r.bytes().await.unwrap().len(), layer.len());
            break;
        }
        assert_eq!(r.status(), 503);
        assert!(Instant::now() < deadline, "the slot was never released");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    node.stop().await;
}

#[tokio::test]
async fn egress_is_paced_to_the_rate_after_a_second_of_burst() {
    const RATE: u64 = MIB as u64;
    let layer = pattern(3 * MIB, 4);
    let (node, url) = node_with(&layer, |c| c.max_egress_bps = RATE).await;

    let started = Instant::now();
    let body = client()
        .get(&url)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let took = started.elapsed();
    assert!(body.as_ref() == layer.as_slice(), "wrong bytes");
    // One second's worth goes at once, the other 2 MiB at 1 MiB/s: at least 2 s however fast
    // the machine (a slower one only adds time, so this bound cannot flake under load).
    assert!(
        took >= Duration::from_millis(1900),
        "3 MiB at {RATE} B/s took {took:?}: not paced"
    );
    let m = node.metrics().await;
    assert!(
        metric(&m, "peermirror_egress_throttled_seconds_total") >= 1.0,
        "{m}"
    );
    node.stop().await;
}
