//! The only writer of a spool entry: it hashes what it writes and tells the readers.
//!
//! Bytes are gathered into batches of [`WRITE_BATCH`]; each full batch goes to a blocking job
//! that hashes it, writes it at its offset, keeps it in the entry's recent batches (readers at
//! the download's head take it from there without reading the file back) and publishes the
//! new length. One job runs at a time, in order, while the caller gathers the next batch from
//! the network. Batch buffers come back once nobody holds them, so a long download neither
//! allocates nor faults in fresh pages per batch.
//!
//! When a write fails, the download goes on without the file: later batches are hashed and
//! kept in memory only, and before adding one the writer waits (at most [`ROOM_WAIT`]) until
//! every reader is done with the oldest batch it would drop.

use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::task::JoinHandle;

use super::{Entry, Failure, Phase, Spool, SpoolError};
use crate::oci::Sha256Verifier;
use crate::sync::MutexExt;

/// Writes are gathered to this size before they are hashed and go to the file: network
/// chunks are often 16-400 KiB, and one blocking-pool hop per chunk would cost more than the
/// copy.
pub(crate) const WRITE_BATCH: usize = 1024 * 1024;
/// Each batch goes to the file in writes of this size. The page cache sizes its folios by the
/// write: a 1 MiB write asks for 1 MiB folios, and on a node whose memory is full of page cache
/// and fragmented, the kernel compacts memory to find them (measured: a quarter of the
/// relaying node's CPU). 32 KiB folios (order 3) are not "costly" allocations.
const WRITE_PIECE: usize = 32 * 1024;
/// A batch that has been filling this long goes out at its next write once it holds
/// [`PART_MIN`] bytes: at a capped link rate a full batch takes a while to gather (1 MiB is
/// 170 ms at 50 Mbit/s), and a node relaying a download to the next would otherwise add that
/// much lag per hop of a rollout chain. At high rates batches fill before it passes.
const PART_AFTER: Duration = Duration::from_millis(10);
/// The smallest batch sent early: one blocking job per few network chunks at most.
const PART_MIN: usize = WRITE_PIECE;
/// How much of the download's head stays in memory for the readers following it (a few
/// batches, per downloading entry).
const RECENT_BYTES: usize = 4 * WRITE_BATCH;
/// After a write error, how long the writer waits for a reader to take a batch before
/// dropping it anyway: memory stays bounded even if a client stops reading (that response
/// then ends with an error when it reads on; its bytes are not there to send).
const ROOM_WAIT: Duration = Duration::from_secs(60);

/// The only writer of an entry. Dropping it without [`Writer::verified`] fails the entry.
pub struct Writer {
    spool: Arc<Spool>,
    entry: Arc<Entry>,
    size: Option<u64>,
    /// Bytes handed to `write`.
    accepted: u64,
    /// Bytes handed to batch jobs (hashed and in the file once the last job is collected).
    flushed: u64,
    /// The batch being filled.
    batch: BytesMut,
    /// When the batch's first byte came: a batch filling slowly goes out early.
    batch_since: Option<Instant>,
    /// A buffer back from the recent batches, for the next batch.
    spare: Option<BytesMut>,
    /// Out while a batch job holds it (boxed: it is most of the writer's size).
    hasher: Option<Box<Sha256Verifier>>,
    /// The batch being hashed and written, if any.
    pending: Option<JoinHandle<BatchDone>>,
    /// Whether every byte is in the file and matched the digest, once [`Writer::check`] knew.
    matched: Option<bool>,
    /// Verified or failed: nothing more may change.
    done: bool,
    /// Where the file failed, once a write did: later batches live in memory only.
    file_end: Option<u64>,
    /// Test seam: the write at this offset fails as if the disk were full.
    #[cfg(test)]
    pub(super) fail_at: Option<u64>,
}

/// What a batch job hands back: the hasher, how the write went, and an old batch's buffer
/// if nobody held it any more.
struct BatchDone {
    hasher: Box<Sha256Verifier>,
    /// The file write's error, if it failed (the batch still reached the readers, from memory).
    fault: Option<(u64, io::Error)>,
    reclaimed: Option<BytesMut>,
}

impl Writer {
    pub(super) fn new(spool: Arc<Spool>, entry: Arc<Entry>) -> Self {
        let hasher = Some(Box::new(Sha256Verifier::new(entry.digest)));
        Writer {
            spool,
            entry,
            size: None,
            accepted: 0,
            flushed: 0,
            batch: BytesMut::new(),
            batch_since: None,
            spare: None,
            hasher,
            pending: None,
            matched: None,
            done: false,
            file_end: None,
            #[cfg(test)]
            fail_at: None,
        }
    }

    pub fn entry(&self) -> &Arc<Entry> {
        &self.entry
    }

    /// Records the size and media type once the first provider answered, reserving the space
    /// (evicting idle verified entries, least recently used first). On `NoRoom` (or a file
    /// error) the entry fails and leaves the spool; the caller streams without it.
    pub fn start(&mut self, size: u64, media_type: String) -> Result<(), SpoolError> {
        if self.done {
            return Err(SpoolError::Ended(self.failure()));
        }
        if self.size.is_some() {
            return Err(SpoolError::AlreadyStarted);
        }
        if let Err(e) = self.spool.reserve(&self.entry, size) {
            // Whatever kept it out of the spool (budget, free space, a file that cannot be
            // created), its readers stream without it.
            self.finish(Err(Failure::NoRoom));
            return Err(e);
        }
        self.size = Some(size);
        self.batch = BytesMut::with_capacity(self.batch_len());
        self.entry.progress.send_modify(|p| {
            p.phase = Phase::Downloading;
            p.size = Some(size);
            p.media_type = Some(media_type);
        });
        Ok(())
    }

    /// Appends bytes in order. They are hashed and reach readers in batches, the last one
    /// when the blob is complete. More bytes than the announced size are refused.
    pub async fn write(&mut self, chunk: &[u8]) -> io::Result<()> {
        if self.done {
            return Err(io::Error::other(SpoolError::Ended(self.failure())));
        }
        let Some(size) = self.size else {
            return Err(io::Error::other("spool write before start"));
        };
        let len = chunk.len() as u64;
        if self.accepted + len > size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the provider sent more than the announced {size} bytes ({} so far)",
                    self.accepted + len
                ),
            ));
        }
        let mut rest = chunk;
        while !rest.is_empty() {
            // Filled to its capacity exactly: a batch never grows (and is never copied).
            let room = self.room().max(1);
            let (now, later) = rest.split_at(room.min(rest.len()));
            if self.batch.is_empty() {
                self.batch_since = Some(Instant::now());
            }
            self.batch.extend_from_slice(now);
            self.accepted += now.len() as u64;
            rest = later;
            let slow = self.batch.len() >= PART_MIN
                && self.batch_since.is_some_and(|t| t.elapsed() >= PART_AFTER);
            if self.room() == 0 || self.accepted == size || slow {
                self.submit().await?;
            }
        }
        Ok(())
    }

    pub fn written(&self) -> u64 {
        self.accepted
    }

    /// Waits until every accepted byte is hashed and in the file: whether the whole announced
    /// size arrived and matched the digest. [`Writer::verified`] then releases the readers.
    pub async fn check(&mut self) -> io::Result<bool> {
        if let Some(m) = self.matched {
            return Ok(m);
        }
        if !self.batch.is_empty() {
            self.submit().await?;
        }
        self.collect().await?;
        let complete = self.size == Some(self.flushed) && self.accepted == self.flushed;
        let m = complete && self.hasher.as_ref().is_some_and(|h| h.matches());
        if complete {
            self.matched = Some(m);
        }
        Ok(m)
    }

    /// Releases the readers' last bytes if [`Writer::check`] found every byte in the file
    /// and matching the digest; otherwise fails the entry (`Mismatch` if the bytes were wrong).
    pub fn verified(mut self) {
        let outcome = match self.matched {
            Some(true) => Ok(()),
            Some(false) => Err(Failure::Mismatch),
            None => Err(Failure::Io(format!(
                "not checked: {} of {:?} bytes written",
                self.flushed, self.size
            ))),
        };
        self.finish(outcome);
    }

    /// Gives up: readers end with an error, the entry leaves the spool, its file is unlinked.
    pub fn fail(mut self, why: Failure) {
        self.finish(Err(why));
    }

    /// What the batch takes before it is full: up to [`WRITE_BATCH`] and within the buffer's
    /// capacity (less after an early batch took the front of the buffer).
    fn room(&self) -> usize {
        let cap = self.batch.capacity().min(WRITE_BATCH);
        cap.saturating_sub(self.batch.len())
    }

    /// The next batch's capacity: a batch, or what is left of the blob if less.
    fn batch_len(&self) -> usize {
        let left = self.size.unwrap_or(0).saturating_sub(self.accepted);
        usize::try_from(left)
            .unwrap_or(WRITE_BATCH)
            .min(WRITE_BATCH)
    }

    /// Hands the batch to a blocking job that hashes it, writes it at its offset, keeps it
    /// among the recent batches and tells the readers, after collecting the previous job.
    /// Without a file (a write failed), it first waits for room among the recent batches.
    async fn submit(&mut self) -> io::Result<()> {
        self.collect().await?;
        let force = match self.file_end {
            Some(fe) => !self.wait_for_room(self.batch.len(), fe).await,
            None => false,
        };
        let Some(mut hasher) = self.hasher.take() else {
            return Err(io::Error::other("spool hasher lost"));
        };
        self.batch_since = None;
        let data = if self.batch.capacity() - self.batch.len() >= PART_MIN {
            // An early batch: the next one fills the rest of the same buffer.
            self.batch.split().freeze()
        } else {
            let next = match self.spare.take() {
                Some(b) if b.capacity() >= self.batch_len() => b,
                _ => BytesMut::with_capacity(self.batch_len()),
            };
            std::mem::replace(&mut self.batch, next).freeze()
        };
        let offset = self.flushed;
        let end = offset + data.len() as u64;
        let entry = self.entry.clone();
        let file_end = self.file_end;
        #[cfg(test)]
        let fail = self.fail_at.is_some_and(|at| (offset..end).contains(&at));
        #[cfg(not(test))]
        let fail = false;
        self.pending = Some(tokio::task::spawn_blocking(move || {
            hasher.update(&data);
            // After a failure nothing more goes to the file: its bytes before it stay intact.
            let fault = match (file_end, entry.file.get()) {
                (Some(_), _) => None,
                (None, _) if fail => Some(io::Error::from_raw_os_error(28)),
                (None, Some(f)) => write_pieces(f, &data, offset).err(),
                (None, None) => Some(io::Error::other("spool file missing")),
            };
            let file_end = file_end.or(fault.as_ref().map(|_| offset));
            let reclaimed = keep_recent(&entry, offset, data, file_end, force);
            entry.progress.send_modify(|p| {
                p.written = end;
                p.file_end = file_end;
            });
            BatchDone {
                hasher,
                fault: fault.map(|e| (offset, e)),
                reclaimed,
            }
        }));
        self.flushed = end;
        Ok(())
    }

    /// Waits until `incoming` bytes fit among the recent batches once those no reader needs
    /// are dropped; false if a reader kept one past [`ROOM_WAIT`] (then it is dropped anyway).
    async fn wait_for_room(&self, incoming: usize, file_end: u64) -> bool {
        let deadline = tokio::time::Instant::now() + ROOM_WAIT;
        loop {
            // Registered before the check, so a reader moving on in between is not missed.
            let notified = self.entry.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self
                .entry
                .recent
                .locked()
                .has_room(incoming, RECENT_BYTES, file_end)
            {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                tracing::warn!(
                    digest = %self.entry.digest,
                    "a reader has not taken the spooled bytes for {ROOM_WAIT:?}: dropping them from memory"
                );
                return false;
            }
        }
    }

    /// Waits for the batch job in flight, if any, and takes back its hasher (and a buffer).
    async fn collect(&mut self) -> io::Result<()> {
        let Some(job) = self.pending.take() else {
            return Ok(());
        };
        let done = job.await.map_err(io::Error::other)?;
        self.hasher = Some(done.hasher);
        if done.reclaimed.is_some() {
            self.spare = done.reclaimed;
        }
        if let Some((offset, e)) = done.fault {
            // Once per blob: later batches are not written at all.
            self.file_end = Some(offset);
            self.spool.write_failed(&self.entry, offset, &e);
        }
        Ok(())
    }

    fn failure(&self) -> Failure {
        match self.entry.phase() {
            Phase::Failed(why) => why,
            _ => Failure::Aborted,
        }
    }

    fn finish(&mut self, outcome: Result<(), Failure>) {
        if self.done {
            return;
        }
        self.done = true;
        // Followers read the rest from the file; the memory goes now. Unless the file failed:
        // then the bytes past its end live only here, until the last reader drops the entry.
        if self.file_end.is_none() || outcome.is_err() {
            self.entry.recent.locked().batches.clear();
        }
        match outcome {
            Ok(()) => self
                .entry
                .progress
                .send_modify(|p| p.phase = Phase::Verified),
            Err(why) => {
                // Out of the spool first, so a new claim starts afresh instead of joining a
                // failed download.
                self.spool.forget(&self.entry);
                self.entry
                    .progress
                    .send_modify(|p| p.phase = Phase::Failed(why));
            }
        }
    }
}

/// Adds the batch at `offset` to the entry's recent batches and drops the oldest beyond
/// [`RECENT_BYTES`]; past a write error, only those no reader needs (unless `force`). The
/// buffer of a dropped batch nobody holds comes back for reuse.
fn keep_recent(
    entry: &Entry,
    offset: u64,
    data: bytes::Bytes,
    file_end: Option<u64>,
    force: bool,
) -> Option<BytesMut> {
    let mut reclaimed = None;
    let mut recent = entry.recent.locked();
    // Not after the writer finished: the followers read the file then.
    if entry.progress.borrow().phase == Phase::Downloading {
        recent.batches.push_back((offset, data));
    }
    let mut held = recent.held();
    while held > RECENT_BYTES {
        let Some((off, len)) = recent.batches.front().map(|(o, b)| (*o, b.len())) else {
            break;
        };
        if !force && file_end.is_some_and(|fe| recent.needed(off, len, fe)) {
            break;
        }
        let Some((_, old)) = recent.batches.pop_front() else {
            break;
        };
        held -= old.len();
        // Back to the writer if no reader still holds a slice of it.
        if let Ok(mut b) = old.try_into_mut() {
            b.clear();
            reclaimed = Some(b);
        }
    }
    reclaimed
}

/// Writes `data` at `offset` in [`WRITE_PIECE`] pieces.
fn write_pieces(f: &std::fs::File, data: &[u8], offset: u64) -> io::Result<()> {
    let mut at = offset;
    for piece in data.chunks(WRITE_PIECE) {
        f.write_all_at(piece, at)?;
        at += piece.len() as u64;
    }
    Ok(())
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.finish(Err(Failure::Aborted));
    }
}
