//! A reader over one spool entry: a window of the blob, streamed while it downloads.
//!
//! It wakes on the entry's progress channel (no polling), takes the bytes from the writer's
//! recent batches when it follows the download closely, else reads with positioned reads from
//! the entry's open file (so an unlinked file still serves; from the page cache on the calling
//! thread when it can, else on the blocking pool), and releases the last
//! [`HOLD_BACK`] bytes of its window only once the whole blob is verified.
//!
//! After a write error the file holds only the bytes before it: a reader reads those from the
//! file and the rest from the writer's batches in memory, and takes its held-back tail into
//! its own hands as it arrives, so the writer never waits on a reader that waits on it.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;

use super::{Entry, Phase, Progress};
use crate::content::ByteStream;
use crate::fsutil::read::ChunkReader;

/// The largest read: small enough that the chunk is still in the core's L2 cache when it is
/// copied to the socket (or encrypted), large enough that syscalls do not matter.
const READ_CHUNK: u64 = 256 * 1024;

/// Read buffers a reader keeps for reuse: one being read into, the others still being sent.
const POOLED: usize = 3;

/// How much of a window's end waits for verification. One byte would keep the invariant; a
/// little more makes the final release one read, not a trickle.
pub(super) const HOLD_BACK: u64 = 64 * 1024;

pub(super) fn stream(
    entry: Arc<Entry>,
    start: u64,
    end: u64,
    stall: Duration,
) -> Option<ByteStream> {
    let Some(stop) = end.checked_add(1).filter(|_| start <= end) else {
        let err = io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("empty or invalid window {start}-{end}"),
        );
        return Some(Box::pin(futures_util::stream::once(
            async move { Err(err) },
        )));
    };
    let id = entry.attach(start, stop)?;
    // Counted from creation, not first poll: a response about to read pins its entry.
    entry.readers.fetch_add(1, Ordering::Relaxed);
    let guard = Guard(entry.clone(), id);
    let state = Read {
        rx: entry.progress.subscribe(),
        entry,
        pos: start,
        stop,
        held: HOLD_BACK.min(stop - start),
        stall,
        reader: ChunkReader::new(POOLED),
        tail: VecDeque::new(),
        done: false,
        guard,
    };
    Some(Box::pin(futures_util::stream::unfold(
        state,
        |mut st| async move {
            if st.done {
                return None;
            }
            let item = st.next().await?;
            // An error ends the stream: nothing follows it, least of all the held-back tail.
            st.done = item.is_err();
            Some((item, st))
        },
    )))
}

/// Keeps the entry's reader count (it shields the entry from eviction) and this reader's
/// cursor (it keeps the batches it needs in memory after a write error) while the stream lives.
struct Guard(Arc<Entry>, u64);

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.readers.fetch_sub(1, Ordering::Relaxed);
        self.0.detach(self.1);
    }
}

struct Read {
    entry: Arc<Entry>,
    rx: watch::Receiver<Progress>,
    pos: u64,
    /// One past the window's last byte.
    stop: u64,
    /// Bytes at the window's end released only once verified (at least one).
    held: u64,
    stall: Duration,
    /// Reads the file into buffers back from chunks the client side has sent, so a download
    /// neither zero-fills nor faults in fresh pages per chunk.
    reader: ChunkReader,
    /// The held-back bytes, taken from memory after a write error (`stop - held..pos`),
    /// released once verified.
    tail: VecDeque<Bytes>,
    done: bool,
    guard: Guard,
}

impl Read {
    async fn next(&mut self) -> Option<io::Result<Bytes>> {
        loop {
            let (phase, written, size, file_end) = {
                let p = self.rx.borrow_and_update();
                (p.phase.clone(), p.written, p.size, p.file_end)
            };
            if phase == Phase::Verified
                && let Some(b) = self.tail.pop_front()
            {
                return Some(Ok(b));
            }
            // A tail taken from memory still waits for the verification.
            if self.pos >= self.stop && self.tail.is_empty() {
                return None;
            }
            let body_end = self.stop - self.held;
            // The file lost the tail's bytes: take them from memory now, before the writer
            // drops them, and hold them until verified.
            let take_tail = phase == Phase::Downloading
                && self.pos >= body_end
                && file_end.is_some_and(|fe| self.stop > fe);
            let limit = match (phase, size) {
                (Phase::Failed(why), _) => {
                    return Some(Err(io::Error::other(format!(
                        "spooled download failed: {why}"
                    ))));
                }
                (Phase::Connecting, _) | (_, None) => 0,
                (phase, Some(size)) => {
                    if self.stop > size {
                        return Some(Err(io::Error::new(
                            io::ErrorKind::InvalidInput,
                            format!("window ends at {} beyond the {size}-byte blob", self.stop),
                        )));
                    }
                    if phase == Phase::Verified {
                        self.stop
                    } else if take_tail {
                        written.min(self.stop)
                    } else {
                        written.min(body_end)
                    }
                }
            };
            if limit > self.pos {
                let chunk = self.read(limit, file_end).await;
                match chunk {
                    Ok(b) if take_tail => self.tail.push_back(b),
                    other => return Some(other),
                }
                continue;
            }
            match tokio::time::timeout(self.stall, self.rx.changed()).await {
                Ok(Ok(())) => {}
                // The entry owns the sender and we hold the entry: not expected, but not a panic.
                Ok(Err(_)) => return Some(Err(io::Error::other("spool entry closed"))),
                Err(_) => {
                    return Some(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "spooled download made no progress for {:?} at byte {}",
                            self.stall, self.pos
                        ),
                    )));
                }
            }
        }
    }

    /// Reads `pos..min(limit, pos + READ_CHUNK)`, bytes the writer has published: from its
    /// recent batches, else from the file (never at or past `file_end`).
    async fn read(&mut self, limit: u64, file_end: Option<u64>) -> io::Result<Bytes> {
        let chunk = self.fetch(limit, file_end).await?;
        self.pos += chunk.len() as u64;
        self.entry.advance(self.guard.1, self.pos);
        Ok(chunk)
    }

    async fn fetch(&mut self, limit: u64, file_end: Option<u64>) -> io::Result<Bytes> {
        let want = (limit - self.pos).min(READ_CHUNK);
        // Following the download: its latest batches are still in memory.
        if let Some(b) = self.entry.recent_slice(self.pos, self.pos + want) {
            return Ok(b);
        }
        let want = match file_end {
            Some(fe) if self.pos >= fe => {
                // The writer keeps what a reader needs; only a reader that stalled longer than
                // the writer would wait for it gets here.
                return Err(io::Error::other(format!(
                    "the spool file failed at byte {fe} and byte {} is no longer in memory",
                    self.pos
                )));
            }
            Some(fe) => want.min(fe - self.pos),
            None => want,
        };
        let len = usize::try_from(want).map_err(io::Error::other)?;
        // No larger than the window needs (`len` is at most this).
        let cap =
            usize::try_from((self.stop - self.pos).min(READ_CHUNK)).map_err(io::Error::other)?;
        let file = self
            .entry
            .file
            .get()
            .ok_or_else(|| io::Error::other("spool file missing"))?;
        // Just written: usually still in the page cache, so read on this thread, where the
        // bytes are sent next, rather than on a pool thread.
        let chunk = self.reader.read(file, self.pos, len, cap).await?;
        if chunk.is_empty() || !intact(file, self.pos, chunk.len() as u64) {
            // Never send what a truncation left (zeros, or nothing): end this response
            // before it completes, and keep new requests away from the file.
            self.entry.damaged.store(true, Ordering::Relaxed);
            tracing::warn!(digest = %self.entry.digest, at = self.pos, "the spool file was truncated under its readers; this response ends, new requests download afresh");
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "the spool file lost the bytes written at {} (truncated)",
                    self.pos
                ),
            ));
        }
        Ok(chunk)
    }
}

/// Whether `pos..pos + n`, just read, is still what the writer wrote. The writer writes in
/// order at its offset and never leaves a hole, so a file truncated under it (an operator
/// cleaning the data dir) is shorter than the bytes read, or, once the writer wrote past the
/// cut again, has a hole there that reads as zeros. A file system that cannot report holes
/// has only the length checked.
fn intact(file: &std::fs::File, pos: u64, n: u64) -> bool {
    let end = pos.saturating_add(n);
    match file.metadata() {
        Ok(m) if m.len() >= end => {}
        _ => return false,
    }
    match rustix::fs::seek(file, rustix::fs::SeekFrom::Hole(pos)) {
        Ok(hole) => hole >= end,
        Err(_) => true,
    }
}
