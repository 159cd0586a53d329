//! Pooled read buffers lent out as [`Bytes`] and returned when the chunk is dropped.

use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;

use crate::sync::MutexExt;

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
        match self.spare.locked().pop() {
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
        let mut spare = self.spare.locked();
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
    use super::*;

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
        assert_eq!(pool.spare.locked().len(), 1);
        // A chunk that outlives its pool is freed, not leaked into a dead pool.
        let late = pool.lend(pool.take(2), 2);
        drop(pool);
        assert_eq!(&late[..], &[0, 0]);
    }
}
