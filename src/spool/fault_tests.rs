//! The spool's local faults: a write error mid-download (the download goes on from memory,
//! every reader gets every byte, memory stays bounded) and a filesystem without room.

use std::sync::Arc;

use futures_util::StreamExt;

use super::tests::{MIB, QUIET, STALL, blob, claim_new, collect, spool};
use super::writer::WRITE_BATCH;
use super::*;

/// Writes `data` in network-sized chunks, then verifies; records the most bytes the entry
/// ever held in memory.
async fn write_all(mut w: Writer, data: Arc<Vec<u8>>) -> usize {
    let entry = w.entry().clone();
    let mut most = 0;
    for c in data.chunks(100_000) {
        w.write(c).await.unwrap();
        most = most.max(entry.recent.locked().held());
    }
    assert!(w.check().await.unwrap(), "the whole blob matched");
    w.verified();
    most
}

#[tokio::test]
async fn a_write_error_mid_download_goes_on_from_memory() {
    let (_tmp, s) = spool(64 * MIB);
    let data = Arc::new(blob(12 * MIB as usize + 4321, 9));
    let size = data.len() as u64;
    let d = Digest::of(&data);
    let (entry, mut w) = claim_new(&s, d);
    let fail_at = 3 * MIB + 100;
    w.fail_at = Some(fail_at);
    w.start(size, "x".into()).unwrap();

    // A reader following from the start, one whose window ends just past the failure (its
    // held-back tail lives only in memory), and one that stops for a while early on.
    let whole = tokio::spawn(collect(entry.reader(0, size - 1, STALL).unwrap()));
    let ranged = tokio::spawn(collect(
        entry.reader(fail_at - 10, fail_at + 70_000, STALL).unwrap(),
    ));
    let mut behind = entry.reader(0, size - 1, STALL).unwrap();
    let writing = tokio::spawn(write_all(w, data.clone()));
    let mut behind_got = behind.next().await.map(|b| b.unwrap().to_vec());

    // The writer waits for the reader that stopped instead of dropping bytes it needs.
    tokio::time::sleep(QUIET * 3).await;
    let written = entry.progress.borrow().written;
    assert!(written > fail_at && written < size, "written {written}");
    assert_eq!(entry.progress.borrow().file_end, Some(3 * MIB));
    assert!(!writing.is_finished());
    // The entry left the spool at the error: new requests go unspooled.
    assert!(s.get(&d).is_none());
    assert!(!s.dir.join(d.hex()).exists(), "the failed file is unlinked");
    assert_eq!(s.faults().count(FaultKind::SpoolWrite), 1);

    // The stopped reader reads on: the file's intact part, then memory.
    let mut got = behind_got.take().unwrap_or_default();
    while let Some(b) = tokio::time::timeout(STALL, behind.next()).await.unwrap() {
        got.extend_from_slice(&b.unwrap());
    }
    assert!(got == *data, "the reader behind got every byte");
    let most = tokio::time::timeout(STALL, writing).await.unwrap().unwrap();
    assert!(
        most <= 4 * WRITE_BATCH + WRITE_BATCH,
        "held {most} bytes in memory"
    );
    let (got, err) = whole.await.unwrap();
    assert!(err.is_none(), "{err:?}");
    assert!(got == *data);
    let (got, err) = ranged.await.unwrap();
    assert!(err.is_none(), "{err:?}");
    let want = &data[(fail_at - 10) as usize..=(fail_at + 70_000) as usize];
    let first_diff = got.iter().zip(want).position(|(a, b)| a != b);
    assert!(
        got == want,
        "ranged: {} of {} bytes, first difference at {first_diff:?}",
        got.len(),
        want.len()
    );
    assert_eq!(entry.phase(), Phase::Verified);
    // Counted once per blob, and the spool rests: the next blob streams unspooled.
    assert_eq!(s.faults().count(FaultKind::SpoolWrite), 1);
    let (_, mut next) = claim_new(&s, Digest::of(b"next"));
    assert!(matches!(
        next.start(10, "x".into()),
        Err(SpoolError::Resting)
    ));
}

#[tokio::test]
async fn after_a_write_error_a_reader_never_completes_unverified_bytes() {
    let (_tmp, s) = spool(64 * MIB);
    let data = blob(3 * MIB as usize, 3);
    let (entry, mut w) = claim_new(&s, Digest::of(b"something else"));
    w.fail_at = Some(MIB);
    w.start(data.len() as u64, "x".into()).unwrap();
    let reading = tokio::spawn(collect(
        entry.reader(0, data.len() as u64 - 1, STALL).unwrap(),
    ));
    w.write(&data).await.unwrap();
    assert!(!w.check().await.unwrap());
    w.verified();
    let (got, err) = reading.await.unwrap();
    assert!(err.is_some(), "a mismatch must end the body with an error");
    assert!(got.len() < data.len());
}

#[tokio::test]
async fn a_late_reader_whose_bytes_are_gone_is_refused_before_any_byte() {
    let (_tmp, s) = spool(64 * MIB);
    let data = Arc::new(blob(10 * MIB as usize, 5));
    let size = data.len() as u64;
    let (entry, mut w) = claim_new(&s, Digest::of(&data));
    w.fail_at = Some(MIB);
    w.start(size, "x".into()).unwrap();
    // Nobody reads: the writer drops what it must and finishes.
    let most = write_all(w, data.clone()).await;
    assert!(most <= 5 * WRITE_BATCH, "held {most}");
    // The bytes past the failure that left memory cannot be served: refused, so the caller
    // streams unspooled; what is still in the file, or still in memory, is served.
    assert!(entry.reader(MIB, size - 1, STALL).is_none());
    assert!(entry.reader(0, size - 1, STALL).is_none());
    let (got, err) = collect(entry.reader(0, MIB - 1, STALL).unwrap()).await;
    assert!(err.is_none(), "{err:?}");
    assert!(got == data[..MIB as usize]);
    let (got, err) = collect(entry.reader(size - 1000, size - 1, STALL).unwrap()).await;
    assert!(err.is_none(), "{err:?}");
    assert!(got == data[(size - 1000) as usize..]);
}

/// What [`space_of_a_small_disk`] reports free (a 1 GiB filesystem others write to as well).
static AVAILABLE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(200 * MIB);

fn space_of_a_small_disk(_: &Path) -> io::Result<Space> {
    Ok(Space {
        total: 1 << 30,
        available: AVAILABLE.load(std::sync::atomic::Ordering::Relaxed),
    })
}

#[tokio::test]
async fn a_blob_the_filesystem_has_no_room_for_is_not_spooled() {
    let tmp = tempfile::tempdir().unwrap();
    let faults = Arc::new(LocalFaults::default());
    let s = Spool::build(
        tmp.path().join("spool"),
        1 << 40,
        faults.clone(),
        space_of_a_small_disk,
    )
    .unwrap();
    // The budget keeps below the free space, with 32 MiB of headroom.
    assert_eq!(s.usage().max, 168 * MIB);
    let (_, mut w) = claim_new(&s, Digest::of(b"a"));
    w.start(30 * MIB, "x".into()).unwrap();
    // Someone else filled the disk: 30 MiB promised and not yet written, 32 MiB headroom,
    // 40 more do not fit in 100 although the budget has room.
    AVAILABLE.store(100 * MIB, std::sync::atomic::Ordering::Relaxed);
    let (e, mut w2) = claim_new(&s, Digest::of(b"b"));
    let err = w2.start(40 * MIB, "x".into()).unwrap_err();
    assert!(err.is_no_room(), "{err}");
    assert!(matches!(err, SpoolError::NoSpace { .. }), "{err}");
    assert_eq!(e.descriptor(QUIET).await, Err(Failure::NoRoom));
    assert_eq!(faults.count(FaultKind::SpoolSpace), 1);
    // Beyond what the filesystem left the budget, within --spool-max-bytes: a space fault.
    let (_, mut big) = claim_new(&s, Digest::of(b"big"));
    assert!(big.start(169 * MIB, "x".into()).unwrap_err().is_no_room());
    assert_eq!(faults.count(FaultKind::SpoolSpace), 2);
    let (_, mut w3) = claim_new(&s, Digest::of(b"c"));
    w3.start(30 * MIB, "x".into()).unwrap();
    drop(w);
}
