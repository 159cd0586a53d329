//! A reader over one spool entry: a window of the blob, streamed while it downloads.
//!
//! It wakes on the entry's progress channel (no polling), takes the bytes from the writer's
//! recent batches when it follows the download closely, else reads with positioned reads from
//! the entry's open file (so an unlinked file still serves; from the page cache on the calling
//! thread when it can, else on the blocking pool), and releases the last
//! [`HOLD_BACK`] bytes of its window only once the whole blob is verified.

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

pub(super) fn stream(entry: Arc<Entry>, start: u64, end: u64, stall: Duration) -> ByteStream {
    // Counted from creation, not first poll: a response about to read pins its entry.
    entry.readers.fetch_add(1, Ordering::Relaxed);
    let guard = Guard(entry.clone());
    let Some(stop) = end.checked_add(1).filter(|_| start <= end) else {
        let err = io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("empty or invalid window {start}-{end}"),
        );
        return Box::pin(futures_util::stream::once(async move {
            drop(guard);
            Err(err)
        }));
    };
    let state = Read {
        rx: entry.progress.subscribe(),
        entry,
        pos: start,
        stop,
        held: HOLD_BACK.min(stop - start),
        stall,
        reader: ChunkReader::new(POOLED),
        done: false,
        _guard: guard,
    };
    Box::pin(futures_util::stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        let item = st.next().await?;
        // An error ends the stream: nothing follows it, least of all the held-back tail.
        st.done = item.is_err();
        Some((item, st))
    }))
}

/// Keeps the entry's reader count while the stream lives (it shields the entry from eviction).
struct Guard(Arc<Entry>);

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.readers.fetch_sub(1, Ordering::Relaxed);
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
    done: bool,
    _guard: Guard,
}

impl Read {
    async fn next(&mut self) -> Option<io::Result<Bytes>> {
        loop {
            if self.pos >= self.stop {
                return None;
            }
            let (phase, written, size) = {
                let p = self.rx.borrow_and_update();
                (p.phase.clone(), p.written, p.size)
            };
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
                    } else {
                        written.min(self.stop - self.held)
                    }
                }
            };
            if limit > self.pos {
                return Some(self.read(limit).await);
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

    /// Reads `pos..min(limit, pos + READ_CHUNK)`, bytes known to be in the file.
    async fn read(&mut self, limit: u64) -> io::Result<Bytes> {
        let want = (limit - self.pos).min(READ_CHUNK);
        // Following the download: its latest batches are still in memory.
        if let Some(b) = self.entry.recent_slice(self.pos, self.pos + want) {
            self.pos += b.len() as u64;
            return Ok(b);
        }
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
        self.pos += chunk.len() as u64;
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
