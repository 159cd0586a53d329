//! File reads for streaming responses: from the page cache on the calling thread when it
//! holds the bytes (`preadv2` with `RWF_NOWAIT`), else on the blocking pool, into pooled
//! buffers (see [`super::pool`]).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;

use super::pool::BufPool;

/// Reads one stream's chunks of a file into that stream's pooled buffers.
pub(crate) struct ChunkReader {
    pool: Arc<BufPool>,
    /// Whether to try the page cache on the calling thread first (off once the file system
    /// refused `RWF_NOWAIT`).
    nowait: bool,
}

impl ChunkReader {
    /// A reader keeping up to `keep` spare buffers: the one being read into and those whose
    /// chunks are still queued for sending.
    pub(crate) fn new(keep: usize) -> Self {
        ChunkReader {
            pool: BufPool::new(keep),
            nowait: true,
        }
    }

    /// Up to `len` bytes of `file` from `pos`, read into a buffer of at least `buf_len`
    /// bytes; empty at the end of the file. A read the page cache can answer is done on the
    /// calling thread, so the bytes land in the cache of the core that sends them next; only
    /// one that would wait for the disk goes to the blocking pool, and reads until `len` or
    /// the end of the file. Fewer than `len` bytes come back when the page cache held fewer.
    pub(crate) async fn read(
        &mut self,
        file: &Arc<File>,
        pos: u64,
        len: usize,
        buf_len: usize,
    ) -> io::Result<Bytes> {
        // A returned buffer is initialised already: no zeroing, no allocation.
        let mut buf = self.pool.take(buf_len.max(len));
        let cached = if self.nowait {
            read_cached(file, buf.get_mut(..len).unwrap_or_default(), pos)
        } else {
            Cached::Miss
        };
        let n = match cached {
            Cached::Read(n) => n,
            Cached::Failed(e) => {
                self.pool.give_back(buf);
                return Err(e);
            }
            Cached::Unsupported | Cached::Miss => {
                self.nowait &= !matches!(cached, Cached::Unsupported);
                let file = file.clone();
                let (back, res) = tokio::task::spawn_blocking(move || {
                    let res = read_full(&file, buf.get_mut(..len).unwrap_or_default(), pos);
                    (buf, res)
                })
                .await
                .map_err(io::Error::other)?;
                buf = back;
                match res {
                    Ok(n) => n,
                    Err(e) => {
                        self.pool.give_back(buf);
                        return Err(e);
                    }
                }
            }
        };
        Ok(self.pool.lend(buf, n))
    }
}

/// What a read that must not block found.
pub(crate) enum Cached {
    /// Bytes from the page cache (0: the end of the file), possibly fewer than asked.
    Read(usize),
    /// The read would wait for the disk.
    Miss,
    /// The file system does not take `RWF_NOWAIT`.
    Unsupported,
    Failed(io::Error),
}

/// Reads what the page cache holds at `pos` without blocking.
pub(crate) fn read_cached(file: &File, buf: &mut [u8], pos: u64) -> Cached {
    use rustix::io::{Errno, ReadWriteFlags};
    loop {
        let mut iov = [io::IoSliceMut::new(buf)];
        match rustix::io::preadv2(file, &mut iov, pos, ReadWriteFlags::NOWAIT) {
            Ok(n) => return Cached::Read(n),
            Err(Errno::INTR) => {}
            Err(Errno::AGAIN) => return Cached::Miss,
            Err(Errno::OPNOTSUPP | Errno::NOSYS | Errno::INVAL) => return Cached::Unsupported,
            Err(e) => return Cached::Failed(e.into()),
        }
    }
}

/// Fills `buf` from `pos` unless the file ends first; returns how much was read.
fn read_full(file: &File, buf: &mut [u8], pos: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], pos + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}
