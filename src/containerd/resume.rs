//! A blob read that survives its source going away under it: a content-dir file that ends
//! early or fails goes on over gRPC from the byte reached, and a gRPC `Content.Read` that
//! breaks (containerd restarting) is re-opened at that byte, with bounded retries and backoff.
//!
//! A response in progress has sent its headers: ending its body early fails containerd's
//! pull (a `Range` retry to this node, then no fallback). So the read goes on from the same
//! digest at `offset` = bytes sent; only when containerd does not come back within a few
//! seconds (or no longer has the blob) does that one response fail.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;

use crate::content::{ByteStream, SourceError};

/// Re-opens tried after a break before the read fails: with the backoff below, about 3.5 s,
/// enough for a containerd restart (it serves again within a second here).
const TRIES: u32 = 6;
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Where the rest of a blob comes from: a fresh gRPC read from `offset` to `end` (to the end
/// of the blob when `None`), and the blob's size (to tell a clean end from a cut one).
pub(super) trait Reopen: Send + Sync + 'static {
    fn reopen(
        &self,
        offset: u64,
        end: Option<u64>,
    ) -> BoxFuture<'static, Result<ByteStream, SourceError>>;
    fn size(&self) -> BoxFuture<'static, Result<Option<u64>, SourceError>>;
}

/// The first stream, and what it is.
pub(super) enum First {
    /// The content-dir file, `len` bytes long when opened: fewer bytes mean it was cut.
    File(ByteStream, u64),
    /// A gRPC read.
    Grpc(ByteStream),
}

/// `first` from `offset` to `end` (the whole rest when `None`), continued through `source`
/// whenever it breaks.
pub(super) fn resumable(
    first: First,
    source: Arc<dyn Reopen>,
    what: String,
    offset: u64,
    end: Option<u64>,
) -> ByteStream {
    let (current, from_file, end) = match first {
        First::File(s, len) => (s, true, Some(end.unwrap_or(len))),
        First::Grpc(s) => (s, false, end),
    };
    let state = Resume {
        current,
        from_file,
        source,
        what,
        pos: offset,
        end,
        tries: 0,
        failed: false,
    };
    Box::pin(futures_util::stream::unfold(state, |mut st| async move {
        if st.failed {
            return None;
        }
        let item = st.next().await?;
        st.failed = item.is_err();
        Some((item, st))
    }))
}

struct Resume {
    current: ByteStream,
    from_file: bool,
    source: Arc<dyn Reopen>,
    /// The digest, for logs.
    what: String,
    /// The next byte to send.
    pos: u64,
    /// One past the last byte, when known.
    end: Option<u64>,
    /// Re-opens since the last byte received.
    tries: u32,
    failed: bool,
}

impl Resume {
    async fn next(&mut self) -> Option<io::Result<Bytes>> {
        loop {
            if self.end.is_some_and(|e| self.pos >= e) {
                return None;
            }
            let why = match self.current.next().await {
                Some(Ok(chunk)) => {
                    if chunk.is_empty() {
                        continue;
                    }
                    self.pos += chunk.len() as u64;
                    self.tries = 0;
                    return Some(Ok(chunk));
                }
                Some(Err(e)) => e.to_string(),
                None => match self.clean_end().await {
                    Ok(true) => return None,
                    Ok(false) => format!("the stream ended at byte {}", self.pos),
                    Err(e) => e.to_string(),
                },
            };
            if let Err(e) = self.reopen(&why).await {
                return Some(Err(e));
            }
        }
    }

    /// Whether a stream that ended has sent everything: up to the known end, else up to the
    /// blob's size (asked; an error means containerd went away, so not clean).
    async fn clean_end(&mut self) -> Result<bool, SourceError> {
        if let Some(end) = self.end {
            return Ok(self.pos >= end);
        }
        let size = self.source.size().await?;
        Ok(size.is_none_or(|s| self.pos >= s))
    }

    /// Replaces the broken stream with a gRPC read from `pos`, retrying with backoff.
    async fn reopen(&mut self, why: &str) -> io::Result<()> {
        let mut backoff = FIRST_BACKOFF;
        // Leaving the file for gRPC needs no wait: containerd is up.
        let mut wait = !self.from_file;
        loop {
            if self.tries >= TRIES {
                tracing::warn!(blob = %self.what, at = self.pos, reason = %why, "a local read broke and containerd did not come back in time; this response fails");
                return Err(io::Error::other(format!(
                    "reading {} broke at byte {} ({why}) and could not be resumed",
                    self.what, self.pos
                )));
            }
            if self.tries == 0 {
                let from = if self.from_file {
                    "content-dir file"
                } else {
                    "containerd read"
                };
                tracing::warn!(blob = %self.what, at = self.pos, reason = %why, "{from} broke mid-response; resuming over gRPC");
            }
            self.tries += 1;
            if wait {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            wait = true;
            match self.source.reopen(self.pos, self.end).await {
                Ok(s) => {
                    self.current = s;
                    self.from_file = false;
                    return Ok(());
                }
                // Gone (garbage-collected): nothing to resume from.
                Err(SourceError::NotFound(d)) => {
                    tracing::warn!(blob = %self.what, at = self.pos, "the blob vanished mid-response; this response fails");
                    return Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("{d} vanished at byte {}", self.pos),
                    ));
                }
                Err(e) => tracing::debug!(blob = %self.what, error = %e, "containerd not back yet"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures_util::TryStreamExt;

    use super::*;
    use crate::oci::Digest;

    /// A blob whose re-opens fail `down` times (containerd restarting), then serve from the
    /// offset asked, each stream breaking after `cut` bytes if set.
    struct Fake {
        data: Bytes,
        down: AtomicUsize,
        cut: Option<usize>,
        gone: bool,
        opened_at: Mutex<Vec<u64>>,
    }

    impl Fake {
        fn new(data: &[u8], down: usize, cut: Option<usize>) -> Arc<Fake> {
            Arc::new(Fake {
                data: Bytes::copy_from_slice(data),
                down: AtomicUsize::new(down),
                cut,
                gone: false,
                opened_at: Mutex::default(),
            })
        }

        /// `from..to` in 1000-byte chunks, then an error if `cut` is reached first.
        fn stream(&self, from: usize, to: usize) -> ByteStream {
            let stop = self.cut.map_or(to, |c| to.min(from + c));
            let mut items: Vec<io::Result<Bytes>> = (from..stop)
                .step_by(1000)
                .map(|a| Ok(self.data.slice(a..(a + 1000).min(stop))))
                .collect();
            if stop < to {
                items.push(Err(io::Error::other("h2 protocol error: broken pipe")));
            }
            Box::pin(futures_util::stream::iter(items))
        }
    }

    impl Reopen for Fake {
        fn reopen(
            &self,
            offset: u64,
            end: Option<u64>,
        ) -> BoxFuture<'static, Result<ByteStream, SourceError>> {
            self.opened_at.lock().unwrap().push(offset);
            let res = if self.gone {
                Err(SourceError::NotFound(Digest::of(&self.data)))
            } else if self
                .down
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |d| d.checked_sub(1))
                .is_ok()
            {
                Err(SourceError::Unavailable("connection refused".into()))
            } else {
                let to = end.map_or(self.data.len(), |e| e as usize);
                Ok(self.stream(offset as usize, to))
            };
            Box::pin(async move { res })
        }

        fn size(&self) -> BoxFuture<'static, Result<Option<u64>, SourceError>> {
            let n = self.data.len() as u64;
            Box::pin(async move { Ok(Some(n)) })
        }
    }

    fn data() -> Vec<u8> {
        (0..10_000u32).map(|i| (i % 251) as u8).collect()
    }

    async fn collect(s: ByteStream) -> io::Result<Vec<u8>> {
        let chunks: Vec<Bytes> = s.try_collect().await?;
        Ok(chunks.concat())
    }

    #[tokio::test(start_paused = true)]
    async fn a_broken_grpc_read_resumes_at_its_offset_once_containerd_is_back() {
        let data = data();
        // Breaks after 3500 bytes each time; the first two re-opens find containerd down.
        let fake = Fake::new(&data, 2, Some(3500));
        let first = fake.stream(0, data.len());
        let s = resumable(First::Grpc(first), fake.clone(), "b".into(), 0, None);
        assert_eq!(collect(s).await.unwrap(), data);
        assert_eq!(
            *fake.opened_at.lock().unwrap(),
            vec![3500, 3500, 3500, 7000],
            "re-opened at the byte reached"
        );
        // A window: from 2000 to 9000 only.
        let fake = Fake::new(&data, 0, Some(3000));
        let first = fake.stream(2000, 9000);
        let s = resumable(
            First::Grpc(first),
            fake.clone(),
            "b".into(),
            2000,
            Some(9000),
        );
        assert_eq!(collect(s).await.unwrap(), data[2000..9000]);
        assert_eq!(*fake.opened_at.lock().unwrap(), vec![5000, 8000]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cut_file_goes_on_over_grpc_and_a_clean_short_end_is_not_an_end() {
        let data = data();
        let fake = Fake::new(&data, 0, None);
        // The file was truncated at 4000 while being read (it was 10000 long when opened).
        let file = fake.stream(0, 4000);
        let s = resumable(
            First::File(file, data.len() as u64),
            fake.clone(),
            "b".into(),
            0,
            None,
        );
        assert_eq!(collect(s).await.unwrap(), data);
        assert_eq!(*fake.opened_at.lock().unwrap(), vec![4000]);
        // A gRPC stream that ends cleanly short of the blob's size (no end given) resumes too.
        let fake = Fake::new(&data, 0, None);
        let short = fake.stream(0, 6000);
        let s = resumable(First::Grpc(short), fake.clone(), "b".into(), 0, None);
        assert_eq!(collect(s).await.unwrap(), data);
        assert_eq!(*fake.opened_at.lock().unwrap(), vec![6000]);
    }

    #[tokio::test(start_paused = true)]
    async fn it_fails_when_containerd_stays_down_or_the_blob_is_gone() {
        let data = data();
        let fake = Fake::new(&data, 100, Some(3000));
        let started = tokio::time::Instant::now();
        let s = resumable(
            First::Grpc(fake.stream(0, data.len())),
            fake.clone(),
            "b".into(),
            0,
            None,
        );
        let err = collect(s).await.unwrap_err();
        assert!(err.to_string().contains("could not be resumed"), "{err}");
        assert_eq!(fake.opened_at.lock().unwrap().len(), TRIES as usize);
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(3) && waited <= Duration::from_secs(5),
            "gave up after {waited:?}"
        );
        let gone = Arc::new(Fake {
            gone: true,
            ..Arc::try_unwrap(Fake::new(&data, 0, Some(3000)))
                .ok()
                .unwrap()
        });
        let s = resumable(
            First::Grpc(gone.stream(0, data.len())),
            gone.clone(),
            "b".into(),
            0,
            None,
        );
        let err = collect(s).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert_eq!(gone.opened_at.lock().unwrap().len(), 1);
    }
}
