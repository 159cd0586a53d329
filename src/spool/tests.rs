//! The spool's tests: claims, readers following a download, holding back the tail, eviction.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;

use super::*;

pub(super) const MIB: u64 = 1024 * 1024;
pub(super) const STALL: Duration = Duration::from_secs(10);
/// How long a test waits to conclude that something has not arrived.
pub(super) const QUIET: Duration = Duration::from_millis(200);

pub(super) fn blob(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

/// A filesystem with room to spare, whatever the test machine's disk has free.
fn plenty(_: &Path) -> io::Result<Space> {
    Ok(Space {
        total: 1 << 40,
        available: 1 << 39,
    })
}

pub(super) fn spool(max: u64) -> (tempfile::TempDir, Arc<Spool>) {
    let tmp = tempfile::tempdir().unwrap();
    let s = Spool::build(tmp.path().join("spool"), max, Arc::default(), plenty).unwrap();
    (tmp, s)
}

pub(super) fn claim_new(s: &Arc<Spool>, d: Digest) -> (Arc<Entry>, Writer) {
    match s.claim(d) {
        Claim::New(e, w) => (e, w),
        Claim::Existing(_) => panic!("expected a new entry for {d}"),
    }
}

/// Collects a stream: the bytes it yielded, and its error if it ended with one.
pub(super) async fn collect(mut s: ByteStream) -> (Vec<u8>, Option<io::Error>) {
    let mut got = Vec::new();
    while let Some(item) = tokio::time::timeout(STALL, s.next()).await.unwrap() {
        match item {
            Ok(b) => got.extend_from_slice(&b),
            Err(e) => return (got, Some(e)),
        }
    }
    (got, None)
}

/// Reads what the stream yields until it has been quiet for [`QUIET`] (or ended).
async fn drain_until_quiet(s: &mut ByteStream, got: &mut Vec<u8>) -> bool {
    loop {
        match tokio::time::timeout(QUIET, s.next()).await {
            Err(_) => return false,
            Ok(None) => return true,
            Ok(Some(Ok(b))) => got.extend_from_slice(&b),
            Ok(Some(Err(e))) => panic!("unexpected error: {e}"),
        }
    }
}

/// A complete, verified entry holding `data`.
async fn verified_entry(s: &Arc<Spool>, data: &[u8]) -> Arc<Entry> {
    let (e, mut w) = claim_new(s, Digest::of(data));
    w.start(data.len() as u64, "application/octet-stream".into())
        .unwrap();
    w.write(data).await.unwrap();
    assert!(w.check().await.unwrap());
    w.verified();
    assert_eq!(e.phase(), Phase::Verified);
    e
}

#[tokio::test]
async fn readers_attached_at_different_times_get_every_byte() {
    let (_tmp, s) = spool(64 * MIB);
    let data = blob(3 * MIB as usize + 12345, 7);
    let d = Digest::of(&data);
    let (entry, mut w) = claim_new(&s, d);
    assert!(matches!(s.claim(d), Claim::Existing(_)));
    assert_eq!(entry.phase(), Phase::Connecting);

    // Attached before the size is known: it waits instead of ending.
    let mut early = entry.reader(0, data.len() as u64 - 1, STALL).unwrap();
    assert!(
        tokio::time::timeout(QUIET, early.next()).await.is_err(),
        "a reader must wait for the first bytes"
    );
    let early = tokio::spawn(collect(early));

    w.start(
        data.len() as u64,
        "application/vnd.oci.image.layer.v1.tar".into(),
    )
    .unwrap();
    let desc = entry.descriptor(QUIET).await.unwrap();
    assert_eq!(
        (desc.digest, desc.size, desc.media_type),
        (
            entry.digest(),
            data.len() as u64,
            "application/vnd.oci.image.layer.v1.tar".to_string()
        )
    );
    let (first, rest) = data.split_at(MIB as usize + 7);
    for c in first.chunks(16 * 1024) {
        w.write(c).await.unwrap();
    }
    let late = s
        .get(&d)
        .unwrap()
        .reader(0, data.len() as u64 - 1, STALL)
        .unwrap();
    let late = tokio::spawn(collect(late));
    for c in rest.chunks(100_000) {
        w.write(c).await.unwrap();
    }
    assert_eq!(w.written(), data.len() as u64);
    assert!(w.check().await.unwrap());
    w.verified();

    for r in [early, late] {
        let (got, err) = r.await.unwrap();
        assert!(err.is_none(), "{err:?}");
        assert!(
            got == data,
            "reader got {} of {} bytes",
            got.len(),
            data.len()
        );
    }
    entry.settled(QUIET).await.unwrap();
    assert_eq!(s.digests(), vec![(d, Phase::Verified)]);
}

// Paused time: the runtime advances the clock only when every task, blocking file reads
// included, is waiting; so "quiet" below means the reader has sent all it will before the
// verdict, whatever the load on the machine, not merely that it was slow for 200 ms.
#[tokio::test(start_paused = true)]
async fn a_ranged_reader_gets_its_last_byte_only_once_verified() {
    let (_tmp, s) = spool(64 * MIB);
    let data = blob(300 * 1024, 3);
    let (entry, mut w) = claim_new(&s, Digest::of(&data));
    w.start(data.len() as u64, "x".into()).unwrap();
    // Every byte of the blob is on disk, but the hash is not confirmed yet.
    w.write(&data).await.unwrap();
    let (a, b) = (1000usize, 200_000usize);
    let mut r = entry.reader(a as u64, b as u64, STALL).unwrap();
    let mut got = Vec::new();
    let ended = drain_until_quiet(&mut r, &mut got).await;
    assert!(!ended, "the window must not end before verification");
    assert!(got.len() < b - a + 1, "the last byte arrived unverified");
    // Everything but the held-back tail was sent: the reader waits on the verdict, not on I/O.
    assert_eq!(
        got.len() as u64,
        (b - a + 1) as u64 - reader::HOLD_BACK,
        "the reader stopped short of the held-back tail"
    );
    assert_eq!(got, data[a..a + got.len()]);

    assert!(w.check().await.unwrap());
    w.verified();
    let (rest, err) = collect(r).await;
    assert!(err.is_none(), "{err:?}");
    got.extend_from_slice(&rest);
    assert!(got == data[a..=b], "got {} bytes", got.len());
}

#[tokio::test]
async fn a_failed_download_ends_every_reader_with_an_error() {
    let (_tmp, s) = spool(64 * MIB);
    let data = blob(2 * MIB as usize, 9);
    let d = Digest::of(&data);
    let (entry, mut w) = claim_new(&s, d);
    w.start(data.len() as u64, "x".into()).unwrap();
    let whole = entry.reader(0, data.len() as u64 - 1, STALL).unwrap();
    let window = entry.reader(10, 1000, STALL).unwrap();
    w.write(&data[..MIB as usize]).await.unwrap();
    let whole = tokio::spawn(collect(whole));
    let window = tokio::spawn(collect(window));
    tokio::time::sleep(QUIET).await;
    w.fail(Failure::Mismatch);

    for (r, len) in [(whole, data.len()), (window, 991)] {
        let (got, err) = r.await.unwrap();
        assert!(err.is_some(), "a reader ended cleanly after a failure");
        assert!(got.len() < len, "the held-back tail was released");
    }
    assert_eq!(entry.phase(), Phase::Failed(Failure::Mismatch));
    assert!(s.get(&d).is_none());
    assert!(!s.dir.join(d.hex()).exists());
    assert!(matches!(s.claim(d), Claim::New(..)));
}

#[tokio::test]
async fn bytes_that_do_not_match_the_digest_never_release_the_tail() {
    let (_tmp, s) = spool(64 * MIB);
    let data = blob(3 * MIB as usize + 99, 5);
    let mut lie = data.clone();
    lie[MIB as usize + 3] ^= 1;
    let d = Digest::of(&data);
    let (entry, mut w) = claim_new(&s, d);
    w.start(data.len() as u64, "x".into()).unwrap();
    let whole = tokio::spawn(collect(
        entry.reader(0, data.len() as u64 - 1, STALL).unwrap(),
    ));
    let tail = tokio::spawn(collect(
        entry
            .reader(data.len() as u64 - 10, data.len() as u64 - 1, STALL)
            .unwrap(),
    ));
    for c in lie.chunks(70_000) {
        w.write(c).await.unwrap();
    }
    // The writer hashes what it wrote: the lie is caught, and verifying anyway fails.
    assert!(!w.check().await.unwrap());
    w.verified();
    assert_eq!(entry.phase(), Phase::Failed(Failure::Mismatch));
    for (r, len) in [(whole, data.len()), (tail, 10)] {
        let (got, err) = r.await.unwrap();
        assert!(err.is_some(), "a reader ended cleanly after a mismatch");
        assert!(got.len() < len, "the held-back tail was released");
    }
}

#[tokio::test]
async fn verifying_before_every_byte_arrived_fails() {
    let (_tmp, s) = spool(64 * MIB);
    let data = blob(2 * MIB as usize, 6);
    let (entry, mut w) = claim_new(&s, Digest::of(&data));
    w.start(data.len() as u64, "x".into()).unwrap();
    w.write(&data[..MIB as usize]).await.unwrap();
    assert!(!w.check().await.unwrap());
    w.verified();
    assert!(matches!(entry.phase(), Phase::Failed(Failure::Io(_))));
}

#[tokio::test]
async fn dropping_the_writer_fails_the_entry() {
    let (_tmp, s) = spool(64 * MIB);
    let data = blob(1000, 1);
    let d = Digest::of(&data);
    let (entry, mut w) = claim_new(&s, d);
    w.start(1000, "x".into()).unwrap();
    w.write(&data[..500]).await.unwrap();
    let r = entry.reader(0, 999, STALL).unwrap();
    drop(w);
    let (_, err) = collect(r).await;
    assert!(err.is_some());
    assert_eq!(entry.phase(), Phase::Failed(Failure::Aborted));
    assert_eq!(entry.settled(QUIET).await, Err(Failure::Aborted));
    assert_eq!(s.usage().reserved, 0);
    assert!(matches!(s.claim(d), Claim::New(..)));
}

#[tokio::test]
async fn a_full_spool_evicts_the_least_recently_used_idle_entry() {
    let (_tmp, s) = spool(3 * MIB);
    let a = verified_entry(&s, &blob(MIB as usize, 1)).await;
    let b = verified_entry(&s, &blob(MIB as usize, 2)).await;
    // `a` was claimed first but used last.
    assert!(s.get(&a.digest()).is_some());

    let big = blob(2 * MIB as usize, 3);
    let (_, mut w) = claim_new(&s, Digest::of(&big));
    w.start(2 * MIB, "x".into()).unwrap();
    assert!(
        s.get(&a.digest()).is_some(),
        "the recently used entry was evicted"
    );
    assert!(
        s.get(&b.digest()).is_none(),
        "the least recently used entry stayed"
    );
    assert!(!s.dir.join(b.digest().hex()).exists());
    let u = s.usage();
    assert_eq!((u.reserved, u.entries, u.downloading), (3 * MIB, 2, 1));
}

#[tokio::test]
async fn an_entry_with_a_reader_is_not_evicted() {
    let (_tmp, s) = spool(3 * MIB);
    let a = verified_entry(&s, &blob(MIB as usize, 1)).await;
    let b = verified_entry(&s, &blob(MIB as usize, 2)).await;
    // `a` is the least recently used, but someone is reading it.
    let reading = a.reader(0, MIB - 1, STALL).unwrap();
    assert_eq!(s.usage().readers, 1);

    let (_, mut w) = claim_new(&s, Digest::of(&blob(2 * MIB as usize, 3)));
    w.start(2 * MIB, "x".into()).unwrap();
    assert!(
        s.get(&a.digest()).is_some(),
        "an entry being read was evicted"
    );
    assert!(s.get(&b.digest()).is_none());

    // Nothing left to evict: `a` is read, the 2 MiB one is still downloading.
    let d = Digest::of(b"one more");
    let (e, mut w2) = claim_new(&s, d);
    let err = w2.start(MIB, "x".into()).unwrap_err();
    assert!(err.is_no_room(), "{err}");
    assert_eq!(e.phase(), Phase::Failed(Failure::NoRoom));
    assert!(w2.write(b"x").await.is_err());
    assert!(matches!(s.claim(d), Claim::New(..)));

    let (got, err) = collect(reading).await;
    assert!(err.is_none());
    assert!(got == blob(MIB as usize, 1));
    assert_eq!(s.usage().readers, 0);
}

#[tokio::test]
async fn a_blob_larger_than_the_spool_has_no_room() {
    let (_tmp, s) = spool(3 * MIB);
    let d = Digest::of(b"huge");
    let (e, mut w) = claim_new(&s, d);
    assert!(w.start(3 * MIB + 1, "x".into()).unwrap_err().is_no_room());
    assert_eq!(e.descriptor(QUIET).await, Err(Failure::NoRoom));
    assert!(s.get(&d).is_none());
}

#[tokio::test]
async fn a_removed_entry_still_serves_its_readers() {
    let (_tmp, s) = spool(64 * MIB);
    let data = blob(2 * MIB as usize + 5, 4);
    let d = Digest::of(&data);
    let (entry, mut w) = claim_new(&s, d);
    w.start(data.len() as u64, "x".into()).unwrap();
    let (first, rest) = data.split_at(MIB as usize);
    w.write(first).await.unwrap();
    let mut r = entry.reader(0, data.len() as u64 - 1, STALL).unwrap();
    let mut got = r.next().await.unwrap().unwrap().to_vec();

    s.remove(&d);
    assert!(!s.dir.join(d.hex()).exists(), "the file stays after remove");
    assert!(s.get(&d).is_none());
    assert_eq!(s.usage().reserved, 0);
    // A new claim starts afresh, and does not disturb the removed one.
    let (_, mut w2) = claim_new(&s, d);
    w2.start(data.len() as u64, "x".into()).unwrap();

    w.write(rest).await.unwrap();
    assert!(w.check().await.unwrap());
    w.verified();
    let (tail, err) = collect(r).await;
    assert!(err.is_none(), "{err:?}");
    got.extend_from_slice(&tail);
    assert!(got == data);
    // A reader attached after the removal still reads through the open file.
    let (again, err) = collect(entry.reader(5, 10, STALL).unwrap()).await;
    assert!(err.is_none());
    assert_eq!(again, data[5..=10]);
    drop(w2);
}

#[tokio::test]
async fn a_reader_gives_up_when_nothing_progresses() {
    let (_tmp, s) = spool(64 * MIB);
    let (entry, mut w) = claim_new(&s, Digest::of(b"slow"));
    let size = WRITE_BATCH as u64 + 100_000;
    w.start(size, "x".into()).unwrap();
    // One write batch, so the bytes reach the file.
    w.write(&vec![0; WRITE_BATCH]).await.unwrap();
    let (got, err) = collect(entry.reader(0, size - 1, QUIET).unwrap()).await;
    assert_eq!(got.len(), WRITE_BATCH);
    assert_eq!(err.unwrap().kind(), io::ErrorKind::TimedOut);
    assert_eq!(entry.descriptor(QUIET).await.unwrap().size, size);
    assert_eq!(entry.settled(QUIET).await, Err(Failure::Timeout));
}

#[tokio::test]
async fn a_window_beyond_the_blob_is_an_error() {
    let (_tmp, s) = spool(64 * MIB);
    let (entry, mut w) = claim_new(&s, Digest::of(b"short"));
    w.start(100, "x".into()).unwrap();
    let (_, err) = collect(entry.reader(50, 100, STALL).unwrap()).await;
    assert_eq!(err.unwrap().kind(), io::ErrorKind::InvalidInput);
    let (_, err) = collect(entry.reader(9, 8, STALL).unwrap()).await;
    assert_eq!(err.unwrap().kind(), io::ErrorKind::InvalidInput);
    // More bytes than announced are refused.
    assert!(w.write(&[0; 101]).await.is_err());
}

#[tokio::test]
async fn leftovers_of_a_previous_run_are_deleted() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("spool");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("ab".repeat(32)), b"stale").unwrap();
    std::fs::write(dir.join("sub/x"), b"stale").unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();

    let _s = Spool::new(dir.clone(), MIB).unwrap();
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
}

#[tokio::test]
async fn idle_verified_entries_expire_but_read_or_downloading_ones_stay() {
    let (_tmp, s) = spool(16 * MIB);
    let idle = verified_entry(&s, &blob(1000, 1)).await;
    let read = verified_entry(&s, &blob(1000, 2)).await;
    let _reader = read.reader(0, 999, STALL).unwrap();
    let (downloading, _w) = claim_new(&s, Digest::of(b"still downloading"));
    tokio::time::sleep(Duration::from_millis(30)).await;
    let gone = s.expire_idle(Duration::from_millis(20));
    assert_eq!(gone, vec![idle.digest()]);
    assert!(s.get(&idle.digest()).is_none());
    assert!(s.get(&read.digest()).is_some());
    assert!(s.get(&downloading.digest()).is_some());
    // Asking for an entry makes it fresh again.
    drop(_reader);
    assert!(s.expire_idle(Duration::from_millis(20)).is_empty());
}

/// A spool file truncated under the download: the writer goes on at its offset, leaving a hole
/// that reads as zeros. A reader behind the writer must end with an error before completing,
/// never send those zeros, and a new claim must not hand out the damaged entry.
#[tokio::test]
async fn a_reader_behind_a_truncation_never_sends_its_zeros() {
    let (_tmp, s) = spool(64 * MIB);
    let data = blob(3 * MIB as usize + 12345, 9);
    let d = Digest::of(&data);
    let (entry, mut w) = claim_new(&s, d);
    w.start(data.len() as u64, "application/octet-stream".into())
        .unwrap();
    let (head, tail) = data.split_at(2 * MIB as usize);
    w.write(head).await.unwrap();
    let file = entry.file.get().unwrap().clone();
    // Wait until the first batch is in the file, then cut it.
    let deadline = std::time::Instant::now() + STALL;
    while file.metadata().unwrap().len() < MIB {
        assert!(std::time::Instant::now() < deadline, "nothing written");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    file.set_len(0).unwrap();
    w.write(tail).await.unwrap();
    assert!(
        w.check().await.unwrap(),
        "the writer hashed the right bytes"
    );
    w.verified();

    let (got, err) = collect(entry.reader(0, data.len() as u64 - 1, STALL).unwrap()).await;
    assert!(
        err.is_some(),
        "the reader completed over a truncated file ({} bytes)",
        got.len()
    );
    assert!(
        got.len() < data.len() && got == data[..got.len()],
        "wrong bytes sent"
    );
    assert!(
        matches!(s.claim(d), Claim::New(..)),
        "the damaged entry was handed out again"
    );
}

/// A download arriving slowly (a capped link) reaches its readers in early batches, not a
/// full [`WRITE_BATCH`] later: a node relaying to the next one in a rollout chain adds no
/// batch-long lag per hop. The early batches share one buffer and still hash as one blob.
#[tokio::test]
async fn a_slowly_filling_batch_reaches_readers_early_and_still_verifies() {
    let (_tmp, s) = spool(64 * MIB);
    let data = blob(3 * WRITE_BATCH + 12_345, 7);
    let (entry, mut w) = claim_new(&s, Digest::of(&data));
    w.start(data.len() as u64, "x".into()).unwrap();
    let mut rx = entry.progress.subscribe();
    let piece = 48 * 1024;
    w.write(&data[..piece]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(15)).await;
    w.write(&data[piece..2 * piece]).await.unwrap();
    // Published well before a full batch gathered.
    let seen = tokio::time::timeout(STALL, rx.wait_for(|p| p.written >= 2 * piece as u64))
        .await
        .unwrap()
        .unwrap()
        .written;
    assert!(seen < WRITE_BATCH as u64, "published {seen}");
    let reader = entry.reader(0, data.len() as u64 - 1, STALL).unwrap();
    let rest = &data[2 * piece..];
    for (i, c) in rest.chunks(40 * 1024).enumerate() {
        w.write(c).await.unwrap();
        if i % 3 == 0 {
            tokio::time::sleep(Duration::from_millis(11)).await;
        }
    }
    assert!(w.check().await.unwrap());
    w.verified();
    let (got, err) = collect(reader).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(got, data);
    let (again, err) = collect(entry.reader(0, data.len() as u64 - 1, STALL).unwrap()).await;
    assert!(err.is_none());
    assert_eq!(
        again, data,
        "the file holds every early batch at its offset"
    );
}
