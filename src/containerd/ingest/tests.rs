//! Tests of the ingest watcher and follower against ingest dirs laid out like containerd's.

use std::fs;

use futures_util::StreamExt;

use super::*;

/// Lays out an ingest dir the way containerd's local store does (dir named by the ref's hash).
fn ingest(content: &Path, reference: &str, total: Option<u64>, data: Option<&[u8]>) -> PathBuf {
    let dir = content
        .join("ingest")
        .join(Digest::of(reference.as_bytes()).hex());
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("ref"), reference).unwrap();
    if let Some(t) = total {
        fs::write(dir.join("total"), t.to_string()).unwrap();
    }
    if let Some(d) = data {
        fs::write(dir.join("data"), d).unwrap();
    }
    dir
}

fn append(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    let mut f = fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(bytes).unwrap();
}

/// containerd's commit: rename `data` into the blob store, then remove the ingest dir.
fn commit(content: &Path, dir: &Path, digest: &Digest) {
    let blobs = content.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    fs::rename(dir.join("data"), blobs.join(digest.hex())).unwrap();
    fs::remove_dir_all(dir).unwrap();
}

/// The one event of a blob of `total` bytes coming into flight.
fn started(digest: Digest, total: u64) -> Vec<IngestEvent> {
    vec![IngestEvent::Started {
        digest,
        total: Some(total),
    }]
}

fn blob(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

async fn collect(s: ByteStream) -> (Vec<u8>, Option<io::Error>) {
    let mut s = s;
    let mut out = Vec::new();
    while let Some(item) = s.next().await {
        match item {
            Ok(b) => out.extend_from_slice(&b),
            Err(e) => return (out, Some(e)),
        }
    }
    (out, None)
}

#[test]
fn refs_that_name_a_digest() {
    let d = Digest::of(b"x");
    for r in [
        format!("layer-{d}"),
        format!("manifest-{d}"),
        format!("index-{d}"),
        format!("config-{d}"),
        format!("unknown-{d}"),
        // As stored by containerd's metadata store (namespace and counter prefixed).
        format!("k8s.io/1/layer-{d}"),
        format!("default/12/manifest-{d}"),
        d.to_string(),
    ] {
        assert_eq!(digest_of_ref(&r), Some(d), "{r}");
    }
    for r in [
        "layer-sha256:abc".to_string(),
        format!("layer-{d}-extra"),
        format!("upload{d}"),
        "buildkit/1/xyz".to_string(),
        format!("layer-sha512:{}", d.hex()),
    ] {
        assert_eq!(digest_of_ref(&r), None, "{r}");
    }
}

#[test]
fn tracker_reports_start_duplicates_and_end() {
    let tmp = tempfile::tempdir().unwrap();
    let content = tmp.path();
    let mut t = Tracker::new(content.join("ingest"), DEFAULT_STALE);
    let (now, wall) = (Instant::now(), SystemTime::now());
    // No ingest dir at all yet: nothing, no error.
    assert!(t.scan(now, wall).is_empty());

    let d = Digest::of(b"layer");
    // The ref is written but not `data` yet: `total` may still come, so wait.
    let a = ingest(content, &format!("layer-{d}"), None, None);
    assert!(t.scan(now, wall).is_empty());
    fs::write(a.join("total"), "5").unwrap();
    fs::write(a.join("data"), b"la").unwrap();
    assert_eq!(t.scan(now, wall), started(d, 5));
    // A second pull of the same blob under another ref: still one blob in flight.
    let b = ingest(content, &d.to_string(), Some(5), Some(b""));
    // Not a digest ref: ignored.
    ingest(content, "push-some/thing", Some(3), Some(b""));
    assert!(t.scan(now, wall).is_empty());
    assert_eq!(t.snapshot().len(), 1);
    assert_eq!(t.snapshot()[&d].total, Some(5));

    fs::remove_dir_all(&a).unwrap();
    assert!(
        t.scan(now, wall).is_empty(),
        "the other ingest is still there"
    );
    assert_eq!(t.snapshot()[&d].dir, b);
    commit(content, &b, &d);
    assert_eq!(t.scan(now, wall), vec![IngestEvent::Ended { digest: d }]);
    assert!(t.snapshot().is_empty());
}

/// containerd creates `ref` and then writes it: a poll between the two sees it empty. That
/// dir must be looked at again, not ignored for good. (Failed with the ref read before
/// `data`'s existence was checked: no Started, ever.)
#[test]
fn a_ref_seen_before_it_is_written_is_looked_at_again() {
    let tmp = tempfile::tempdir().unwrap();
    let content = tmp.path();
    let mut t = Tracker::new(content.join("ingest"), DEFAULT_STALE);
    let (now, wall) = (Instant::now(), SystemTime::now());
    let d = Digest::of(b"config");
    let a = ingest(content, "", None, None);
    assert!(t.scan(now, wall).is_empty());
    fs::write(a.join("ref"), format!("config-{d}")).unwrap();
    fs::write(a.join("total"), "6").unwrap();
    assert!(t.scan(now, wall).is_empty());
    fs::write(a.join("data"), b"con").unwrap();
    assert_eq!(t.scan(now, wall), started(d, 6));
}

#[test]
fn tracker_unknown_total_and_stale_ingests() {
    let tmp = tempfile::tempdir().unwrap();
    let content = tmp.path();
    let mut t = Tracker::new(content.join("ingest"), Duration::from_secs(30));
    let (now, wall) = (Instant::now(), SystemTime::now());
    let d = Digest::of(b"cfg");
    // `data` exists without `total`: the size is unknown.
    ingest(content, &format!("config-{d}"), None, Some(b"c"));
    assert_eq!(
        t.scan(now, wall),
        vec![IngestEvent::Started {
            digest: d,
            total: None
        }]
    );
    // A minute later with no write: a left-over, no longer in flight.
    let later = wall + Duration::from_secs(60);
    assert_eq!(
        t.scan(now + STALE_CHECK, later),
        vec![IngestEvent::Ended { digest: d }]
    );
    assert!(t.snapshot().is_empty());

    // A left-over found at start-up is never reported...
    let old = Digest::of(b"old");
    let dir = ingest(content, &format!("layer-{old}"), Some(9), Some(b"o"));
    assert!(t.scan(now + STALE_CHECK * 2, later).is_empty());
    // ...until containerd resumes it (`config` was written just now too, so it is fresh again).
    append(&dir.join("data"), b"ld");
    let mut events = t.scan(now + STALE_CHECK * 3, SystemTime::now());
    events.sort_by_key(|e| format!("{e:?}"));
    let mut want = vec![
        IngestEvent::Started {
            digest: d,
            total: None,
        },
        IngestEvent::Started {
            digest: old,
            total: Some(9),
        },
    ];
    want.sort_by_key(|e| format!("{e:?}"));
    assert_eq!(events, want);
}

#[tokio::test]
async fn watcher_publishes_and_answers_get() {
    let tmp = tempfile::tempdir().unwrap();
    let content = tmp.path().to_path_buf();
    let w = Arc::new(IngestWatcher::new(
        content.clone(),
        Duration::from_millis(10),
    ));
    let mut rx = w.subscribe();
    let stop = CancellationToken::new();
    let task = tokio::spawn(w.clone().run(stop.clone()));

    let d = Digest::of(b"abc");
    let dir = ingest(&content, &format!("layer-{d}"), Some(3), Some(b"a"));
    let ev = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        ev,
        IngestEvent::Started {
            digest: d,
            total: Some(3)
        }
    );
    let got = w.get(&d).unwrap();
    assert_eq!((got.dir.as_path(), got.total), (dir.as_path(), Some(3)));
    assert_eq!(w.current(), vec![got]);

    append(&dir.join("data"), b"bc");
    commit(&content, &dir, &d);
    let ev = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ev, IngestEvent::Ended { digest: d });
    assert!(w.get(&d).is_none());
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
}

/// Writes `full` into `dir/data` in pieces, then commits or aborts.
async fn grow(content: PathBuf, dir: PathBuf, full: Vec<u8>, from: usize, then_commit: bool) {
    let data = dir.join("data");
    let mut at = from;
    let stop_at = if then_commit {
        full.len()
    } else {
        full.len() / 2
    };
    while at < stop_at {
        let n = (300 * 1024).min(stop_at - at);
        append(&data, &full[at..at + n]);
        at += n;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    if then_commit {
        commit(&content, &dir, &Digest::of(&full));
    } else {
        fs::remove_dir_all(&dir).unwrap();
    }
}

/// A layer's ingest of `full` (its size known) with its first `written` bytes in `data`.
fn started_layer(content: &Path, full: &[u8], written: usize) -> Ingest {
    let digest = Digest::of(full);
    let total = Some(full.len() as u64);
    let dir = ingest(
        content,
        &format!("layer-{digest}"),
        total,
        Some(&full[..written]),
    );
    Ingest { digest, dir, total }
}

#[tokio::test]
async fn follow_reads_a_growing_blob_across_its_commit() {
    let tmp = tempfile::tempdir().unwrap();
    let content = tmp.path().to_path_buf();
    let full = blob(3 * 1024 * 1024 + 123);
    let total = full.len() as u64;
    let ing = started_layer(&content, &full, 1000);
    let whole = follow(&ing, &content, 0, total - 1, Duration::from_secs(5));
    let middle = follow(&ing, &content, 500, 2_000_000, Duration::from_secs(5));
    let writer = tokio::spawn(grow(
        content.clone(),
        ing.dir.clone(),
        full.clone(),
        1000,
        true,
    ));
    let ((got, err), (mid, err2)) = tokio::join!(collect(whole), collect(middle));
    writer.await.unwrap();
    assert!(err.is_none() && err2.is_none(), "{err:?} {err2:?}");
    assert!(got == full, "whole blob differs");
    assert!(mid == full[500..=2_000_000], "middle range differs");

    // Opened after the commit: read from the committed blob at the same offset.
    let late = follow(&ing, &content, 10, total - 1, Duration::from_secs(5));
    let (got, err) = collect(late).await;
    assert!(err.is_none(), "{err:?}");
    assert!(got == full[10..]);
}

#[tokio::test]
async fn follow_fails_when_the_ingest_is_aborted() {
    let tmp = tempfile::tempdir().unwrap();
    let content = tmp.path().to_path_buf();
    let full = blob(2 * 1024 * 1024);
    let total = full.len() as u64;
    let ing = started_layer(&content, &full, 10);
    let s = follow(&ing, &content, 0, total - 1, Duration::from_secs(5));
    let writer = tokio::spawn(grow(
        content.clone(),
        ing.dir.clone(),
        full.clone(),
        10,
        false,
    ));
    let (got, err) = collect(s).await;
    writer.await.unwrap();
    let err = err.expect("an aborted ingest must not end cleanly");
    assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
    assert!(got.len() < full.len() && got[..] == full[..got.len()]);

    // A committed blob of the wrong size does not count as the commit.
    let blobs = content.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    fs::write(blobs.join(ing.digest.hex()), &full[..100]).unwrap();
    let (_, err) = collect(follow(&ing, &content, 0, total - 1, Duration::from_secs(5))).await;
    assert_eq!(err.unwrap().kind(), io::ErrorKind::UnexpectedEof);
}

#[tokio::test]
async fn follow_gives_up_on_a_stalled_ingest_and_bad_ranges() {
    let tmp = tempfile::tempdir().unwrap();
    let content = tmp.path().to_path_buf();
    let d = Digest::of(b"never finished");
    let dir = ingest(&content, &format!("layer-{d}"), Some(14), Some(b"never"));
    let ing = Ingest {
        digest: d,
        dir,
        total: Some(14),
    };
    let started = Instant::now();
    let (got, err) = collect(follow(&ing, &content, 0, 13, Duration::from_millis(200))).await;
    assert_eq!(got, b"never");
    assert_eq!(err.unwrap().kind(), io::ErrorKind::TimedOut);
    assert!(started.elapsed() < Duration::from_secs(3));

    let (got, err) = collect(follow(&ing, &content, 0, 14, Duration::from_secs(1))).await;
    assert!(got.is_empty());
    assert_eq!(err.unwrap().kind(), io::ErrorKind::InvalidInput);
    let (_, err) = collect(follow(&ing, &content, 5, 4, Duration::from_secs(1))).await;
    assert_eq!(err.unwrap().kind(), io::ErrorKind::InvalidInput);
}

#[tokio::test]
async fn get_names_a_remaining_dir_when_one_of_two_pulls_goes() {
    let tmp = tempfile::tempdir().unwrap();
    let content = tmp.path().to_path_buf();
    let w = Arc::new(IngestWatcher::new(
        content.clone(),
        Duration::from_millis(10),
    ));
    let mut rx = w.subscribe();
    let stop = CancellationToken::new();
    let task = tokio::spawn(w.clone().run(stop.clone()));
    let d = Digest::of(b"two pulls");
    let first = ingest(
        &content,
        &format!("k8s.io/1/layer-{d}"),
        Some(9),
        Some(b"t"),
    );
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    let second = ingest(
        &content,
        &format!("k8s.io/2/layer-{d}"),
        Some(9),
        Some(b"t"),
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    fs::remove_dir_all(&first).unwrap();
    let moved = tokio::time::timeout(Duration::from_secs(5), async {
        while w.get(&d).map(|i| i.dir) != Some(second.clone()) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(moved.is_ok(), "get() still names {:?}", w.get(&d));
    assert!(rx.try_recv().is_err(), "no event while one pull remains");
    stop.cancel();
    task.await.unwrap();
}
