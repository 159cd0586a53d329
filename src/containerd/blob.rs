//! Blob reads from containerd's content dir: positioned reads on the blocking pool, straight
//! into the buffer that becomes the response chunk, and buffers reused without re-zeroing.
//!
//! `tokio::fs::File` reads into a buffer of its own and copies into the caller's: one more pass
//! over every byte served (18 % of the plain server's CPU in `perf`, issue 13). Here each read
//! lands in a buffer that is handed on as is ([`Bytes::from_owner`]) and comes back to the
//! stream's pool when the chunk has been written and dropped, so safe code need not zero a
//! fresh buffer for every chunk either (a `memset` of 6-8 % in the same profile).
//!
//! A read the page cache can answer is done on the calling thread, others on the blocking
//! pool: [`crate::fsutil::read::ChunkReader`], shared with the spool's readers.

use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;

use crate::content::ByteStream;
use crate::fsutil::read::ChunkReader;

/// Bytes per read and per response chunk: small enough that a chunk is still in the core's
/// L2 cache when TLS encrypts it or the kernel copies it to the socket.
pub(super) const CHUNK: usize = 256 * 1024;
/// Buffers a stream keeps for reuse: the one being read and those queued for writing.
const POOL: usize = 4;

/// Opens `path` and streams `len` bytes (to the end when `None`) from `offset`, in chunks of
/// up to [`CHUNK`]; a file shorter than asked ends the stream early, as a read would. Also
/// returns the file's length when opened: a stream ending before it was cut short.
pub(super) async fn stream(
    path: PathBuf,
    offset: u64,
    len: Option<u64>,
) -> io::Result<(ByteStream, u64)> {
    let (file, file_len) = tokio::task::spawn_blocking(move || {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        Ok::<_, io::Error>((file, len))
    })
    .await
    .map_err(io::Error::other)??;
    let state = Chunks {
        file: Arc::new(file),
        pos: offset,
        end: offset.saturating_add(len.unwrap_or(u64::MAX)),
        reader: ChunkReader::new(POOL),
    };
    let chunks: ByteStream = Box::pin(futures_util::stream::try_unfold(state, Chunks::next));
    Ok((chunks, file_len))
}

struct Chunks {
    file: Arc<File>,
    pos: u64,
    end: u64,
    reader: ChunkReader,
}

impl Chunks {
    async fn next(mut self) -> io::Result<Option<(Bytes, Chunks)>> {
        let want = usize::try_from((self.end - self.pos).min(CHUNK as u64)).unwrap_or(0);
        if want == 0 {
            return Ok(None);
        }
        // Every buffer is CHUNK bytes, so any spare one fits the next read.
        let chunk = self.reader.read(&self.file, self.pos, want, CHUNK).await?;
        if chunk.is_empty() {
            return Ok(None);
        }
        self.pos += chunk.len() as u64;
        Ok(Some((chunk, self)))
    }
}

#[cfg(test)]
mod tests {
    use futures_util::TryStreamExt;

    use super::*;
    use crate::fsutil::read::{Cached, read_cached};

    async fn collect(path: PathBuf, offset: u64, len: Option<u64>) -> (Vec<u8>, Vec<usize>) {
        let chunks: Vec<bytes::Bytes> = stream(path, offset, len)
            .await
            .unwrap()
            .0
            .try_collect()
            .await
            .unwrap();
        let sizes = chunks.iter().map(|c| c.len()).collect();
        (chunks.concat(), sizes)
    }

    #[tokio::test]
    async fn reads_windows_in_chunks_and_stops_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        let data: Vec<u8> = (0..CHUNK * 2 + 123).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();

        let (all, sizes) = collect(path.clone(), 0, None).await;
        assert_eq!(all, data);
        assert_eq!(sizes, vec![CHUNK, CHUNK, 123]);

        let (mid, _) = collect(path.clone(), 10, Some(CHUNK as u64 + 5)).await;
        assert_eq!(mid, data[10..10 + CHUNK + 5]);

        // Past the end, and a length beyond it: what exists, then the end.
        let (tail, _) = collect(path.clone(), data.len() as u64 - 3, Some(100)).await;
        assert_eq!(tail, data[data.len() - 3..]);
        let (none, sizes) = collect(path.clone(), data.len() as u64 + 5, None).await;
        assert!(none.is_empty() && sizes.is_empty());
        let (empty, _) = collect(path, 0, Some(0)).await;
        assert!(empty.is_empty());
    }

    #[tokio::test]
    async fn a_written_chunk_lends_its_buffer_to_the_next_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        std::fs::write(&path, vec![7u8; CHUNK * 3]).unwrap();
        let (mut s, len) = stream(path, 0, None).await.unwrap();
        assert_eq!(len, CHUNK as u64 * 3);
        let first = s.try_next().await.unwrap().unwrap();
        let at = first.as_ptr();
        drop(first);
        let second = s.try_next().await.unwrap().unwrap();
        assert_eq!(second.as_ptr(), at, "the dropped chunk's buffer is reused");
        // While a chunk is held, the next read uses another buffer.
        let third = s.try_next().await.unwrap().unwrap();
        assert_ne!(third.as_ptr(), second.as_ptr());
        assert!(third.iter().all(|b| *b == 7) && second.iter().all(|b| *b == 7));
    }

    #[tokio::test]
    async fn cached_reads_stay_on_the_thread_and_a_cache_miss_reads_on_the_pool() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        let data: Vec<u8> = (0..CHUNK * 3 + 7).map(|i| (i % 253) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let file = File::open(&path).unwrap();
        let mut buf = vec![0u8; 100];
        // Just written: in the page cache, answered without blocking.
        match read_cached(&file, &mut buf, 5) {
            Cached::Read(n) => assert_eq!(buf[..n], data[5..5 + n]),
            Cached::Unsupported => {} // a file system without RWF_NOWAIT: the pool reads
            Cached::Miss => panic!("a file just written is in the page cache"),
            Cached::Failed(e) => panic!("{e}"),
        }
        // Drop the pages (clean after the sync): the stream must read them from the disk on
        // the blocking pool, whole.
        file.sync_all().unwrap();
        rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed).unwrap();
        let (all, sizes) = collect(path, 0, None).await;
        assert_eq!(all, data);
        assert_eq!(sizes.iter().sum::<usize>(), data.len());
    }

    #[tokio::test]
    async fn a_missing_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(stream(dir.path().join("nope"), 0, None).await.is_err());
    }
}
