//! Durable, atomic file writes shared by `configure` (hosts.toml), `certs` (keys and
//! certificates) and the p2p identity key; reads from the page cache that never block, and
//! the pooled buffers file reads are lent out in.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use bytes::Bytes;

/// What to do when the target already exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Existing {
    /// Replace it atomically (readers see the old file or the new one, never half).
    Replace,
    /// Fail with [`io::ErrorKind::AlreadyExists`], even if it appeared while writing.
    Keep,
}

/// Writes `bytes` to `path` atomically: a temp file in the same directory, created with `mode`
/// (a key is never readable by others, not even for a moment), synced, moved into place, and
/// the directory synced so the move survives a crash. The temp file never outlives the call.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32, existing: Existing) -> io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{:016x}.tmp", rand::random::<u64>()));
    let result = write_new(&tmp, bytes, mode).and_then(|()| match existing {
        Existing::Replace => fs::rename(&tmp, path),
        // A hard link fails if `path` exists, where a rename would silently replace it.
        Existing::Keep => fs::hard_link(&tmp, path),
    });
    // After a rename the temp name is gone; after a link (or a failure) it must go.
    let _ = fs::remove_file(&tmp);
    result?;
    File::open(&dir).and_then(|d| d.sync_all())
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
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

/// Read buffers one stream reuses: each chunk is lent out as [`Bytes`] and its buffer comes
/// back when the chunk is dropped (once written out), so a long read neither allocates nor
/// zero-fills a buffer per chunk. Buffers lent out after the stream (and its pool) is gone are
/// freed instead.
pub(crate) struct BufPool {
    spare: Mutex<Vec<Vec<u8>>>,
    /// How many spare buffers to keep.
    keep: usize,
}

impl BufPool {
    pub(crate) fn new(keep: usize) -> Arc<Self> {
        Arc::new(BufPool {
            spare: Mutex::new(Vec::with_capacity(keep)),
            keep,
        })
    }

    /// A buffer of at least `len` initialised bytes: a spare one if any (not zeroed again),
    /// else a new one (zero pages until read into).
    pub(crate) fn take(&self, len: usize) -> Vec<u8> {
        match self.spare().pop() {
            Some(mut buf) => {
                if buf.len() < len {
                    buf.resize(len, 0);
                }
                buf
            }
            None => vec![0; len],
        }
    }

    /// Keeps `buf` for the next [`BufPool::take`], unless enough are kept already.
    pub(crate) fn give_back(&self, buf: Vec<u8>) {
        let mut spare = self.spare();
        if spare.len() < self.keep {
            spare.push(buf);
        }
    }

    /// `buf[..len]` as a chunk that returns `buf` to this pool when dropped.
    pub(crate) fn lend(self: &Arc<Self>, buf: Vec<u8>, len: usize) -> Bytes {
        Bytes::from_owner(Lent {
            buf,
            len,
            home: Arc::downgrade(self),
        })
    }

    fn spare(&self) -> MutexGuard<'_, Vec<Vec<u8>>> {
        // A list of spare buffers: nothing to tear if a holder panicked.
        self.spare.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

struct Lent {
    buf: Vec<u8>,
    len: usize,
    home: Weak<BufPool>,
}

impl AsRef<[u8]> for Lent {
    fn as_ref(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or_default()
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        if let Some(pool) = self.home.upgrade() {
            pool.give_back(std::mem::take(&mut self.buf));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn writes_with_mode_replaces_or_keeps() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        write_atomic(&path, b"one", 0o600, Existing::Keep).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"one");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let err = write_atomic(&path, b"two", 0o600, Existing::Keep).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&path).unwrap(), b"one");
        write_atomic(&path, b"three", 0o644, Existing::Replace).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"three");
        // No temp file left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_lent_chunk_returns_its_buffer_and_the_pool_keeps_only_so_many() {
        let pool = BufPool::new(1);
        let buf = pool.take(8);
        let at = buf.as_ptr();
        let chunk = pool.lend(buf, 3);
        assert_eq!(chunk.len(), 3);
        drop(chunk);
        let again = pool.take(4);
        assert_eq!(
            again.as_ptr(),
            at,
            "the dropped chunk's buffer is taken again"
        );
        assert!(again.len() >= 8, "not shrunk, so not zeroed again");
        // Only `keep` spares: the second buffer given back is freed.
        pool.give_back(again);
        pool.give_back(vec![1; 4]);
        assert_eq!(pool.spare().len(), 1);
        // A chunk that outlives its pool is freed, not leaked into a dead pool.
        let late = pool.lend(pool.take(2), 2);
        drop(pool);
        assert_eq!(&late[..], &[0, 0]);
    }
}
