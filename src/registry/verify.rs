//! Checking local content while serving it to a peer.
//!
//! containerd does not re-verify its store on read, so a blob damaged on disk would be served
//! as is. Hashing a whole multi-GB layer before the first byte would stall the asking peer
//! past its deadline, so a full-blob upload is hashed as it streams ([`checked`]): when the
//! last chunk does not complete the digest, the body ends with an error instead of that
//! chunk, so the asker never completes a damaged copy, and the blob is withdrawn. Verdicts are
//! remembered per digest and file stamp (size, mtime), and persisted under `--data-dir`, so
//! an intact blob streams without hashing and a damaged one is refused at once, also after a
//! restart.

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::{Stream, TryStreamExt};

use crate::content::{ByteStream, ContentSource, SourceError};
use crate::fsutil::{Existing, write_atomic};
use crate::metrics::{FaultKind, LocalFaults};
use crate::oci::{Digest, Sha256Verifier};
use crate::sync::MutexExt;

/// Without a stamp from the source, a verdict is trusted this long.
const UNSTAMPED_TTL: Duration = Duration::from_secs(600);
const MAX_ENTRIES: usize = 100_000;
/// Lines in the persisted file (about 110 bytes each).
const MAX_PERSISTED: usize = 20_000;
/// The file is rewritten at most this often while verdicts come in.
const FLUSH_EVERY: Duration = Duration::from_secs(2);
/// Blobs this small are hashed before the headers (tens of milliseconds at most): a damaged
/// copy then gets a clean 404, where an aborted body would leave containerd holding a damaged
/// prefix and fail that pull. Larger blobs stream at once and are hashed as they go.
pub const HASH_FIRST_MAX: u64 = 64 * 1024 * 1024;

/// Size and modification time of a stored blob.
pub type Stamp = (u64, SystemTime);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Intact,
    /// The stored bytes do not hash to their name.
    Corrupt,
}

#[derive(Clone, Copy)]
struct Entry {
    stamp: Option<Stamp>,
    at: Instant,
    verdict: Verdict,
}

#[derive(Default)]
struct State {
    entries: HashMap<Digest, Entry>,
    dirty: bool,
    flushed: Option<Instant>,
}

pub struct LocalVerifier {
    state: Mutex<State>,
    /// Where verdicts are persisted; `None` keeps them in memory only.
    path: Option<PathBuf>,
    /// One background hash at a time: it competes with uploads for the disk.
    background: Arc<tokio::sync::Semaphore>,
    /// Where a failed write of `path` is counted (it costs the cache across restarts only).
    faults: Arc<LocalFaults>,
}

impl Default for LocalVerifier {
    fn default() -> Self {
        LocalVerifier::new(None)
    }
}

impl LocalVerifier {
    /// A verifier whose verdicts persist in `path` (loaded now; a missing or broken file is
    /// an empty cache).
    pub fn new(path: Option<PathBuf>) -> Self {
        let mut state = State::default();
        if let Some(p) = &path {
            match std::fs::read_to_string(p) {
                Ok(text) => state.entries = parse(&text),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(path = %p.display(), error = %e, "cannot read the verified-blobs file")
                }
            }
        }
        LocalVerifier {
            state: Mutex::new(state),
            path,
            background: Arc::new(tokio::sync::Semaphore::new(1)),
            faults: Arc::default(),
        }
    }

    /// Counts failed writes of the verdicts file into `faults`.
    pub fn with_faults(mut self, faults: Arc<LocalFaults>) -> Self {
        self.faults = faults;
        self
    }

    /// The remembered verdict, if the stored bytes have not changed since.
    pub fn cached(&self, digest: &Digest, stamp: Option<Stamp>) -> Option<Verdict> {
        let e = *self.state.locked().entries.get(digest)?;
        let valid = match (e.stamp, stamp) {
            (Some(a), Some(b)) => a == b,
            (None, None) => e.at.elapsed() < UNSTAMPED_TTL,
            _ => false,
        };
        valid.then_some(e.verdict)
    }

    /// Remember a verdict, and persist the stamped ones (at most every [`FLUSH_EVERY`]).
    pub fn record(&self, digest: Digest, stamp: Option<Stamp>, verdict: Verdict) {
        let snapshot = {
            let mut s = self.state.locked();
            if s.entries.len() >= MAX_ENTRIES && !s.entries.contains_key(&digest) {
                evict(&mut s.entries);
            }
            let at = Instant::now();
            s.entries.insert(digest, Entry { stamp, at, verdict });
            s.dirty |= stamp.is_some();
            let due = s.flushed.is_none_or(|f| f.elapsed() >= FLUSH_EVERY);
            (s.dirty && due && self.path.is_some()).then(|| {
                s.dirty = false;
                s.flushed = Some(at);
                render(&s.entries)
            })
        };
        if let (Some(text), Some(path)) = (snapshot, self.path.clone()) {
            // Off the async threads: write_atomic syncs to disk.
            let faults = self.faults.clone();
            let write = move || {
                if let Err(e) = write_atomic(&path, text.as_bytes(), 0o600, Existing::Replace) {
                    tracing::warn!(path = %path.display(), error = %e, "cannot persist verified blobs");
                    faults.record(
                        FaultKind::VerifiedFile,
                        format!("cannot write {}: {e}", path.display()),
                    );
                }
            };
            match tokio::runtime::Handle::try_current() {
                Ok(h) => drop(h.spawn_blocking(write)),
                Err(_) => write(),
            }
        }
    }

    /// Write any verdicts not yet on disk (at shutdown, and in tests).
    pub fn flush(&self) -> io::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let text = {
            let mut s = self.state.locked();
            s.dirty = false;
            s.flushed = Some(Instant::now());
            render(&s.entries)
        };
        write_atomic(path, text.as_bytes(), 0o600, Existing::Replace)
    }

    /// Hash the whole blob and remember the verdict.
    pub async fn check(
        &self,
        source: &dyn ContentSource,
        digest: &Digest,
        stamp: Option<Stamp>,
    ) -> Result<Verdict, SourceError> {
        let mut v = Sha256Verifier::new(*digest);
        let mut stream = source.read(digest, 0, None).await?;
        while let Some(chunk) = stream.try_next().await? {
            v.update(&chunk);
        }
        let verdict = if v.matches() {
            Verdict::Intact
        } else {
            Verdict::Corrupt
        };
        self.record(*digest, stamp, verdict);
        Ok(verdict)
    }

    /// Hash a blob in the background unless another background hash is running; `on_corrupt`
    /// runs when it turns out damaged.
    pub fn check_later(
        self: &Arc<Self>,
        source: Arc<dyn ContentSource>,
        digest: Digest,
        stamp: Option<Stamp>,
        on_corrupt: impl FnOnce() + Send + 'static,
    ) {
        let Ok(permit) = self.background.clone().try_acquire_owned() else {
            return;
        };
        let me = self.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match me.check(source.as_ref(), &digest, stamp).await {
                Ok(Verdict::Corrupt) => on_corrupt(),
                Ok(Verdict::Intact) => {}
                Err(e) => tracing::debug!(%digest, error = %e, "background verification failed"),
            }
        });
    }
}

/// Drop the oldest tenth of the entries.
fn evict(entries: &mut HashMap<Digest, Entry>) {
    let mut ages: Vec<(Instant, Digest)> = entries.iter().map(|(d, e)| (e.at, *d)).collect();
    ages.sort_unstable_by_key(|(at, _)| *at);
    for (_, d) in ages.iter().take(MAX_ENTRIES / 10 + 1) {
        entries.remove(d);
    }
}

/// One line per stamped verdict: `<digest> <size> <mtime secs>.<nanos> intact|corrupt`,
/// newest first, at most [`MAX_PERSISTED`].
fn render(entries: &HashMap<Digest, Entry>) -> String {
    let mut stamped: Vec<(&Digest, &Entry, Stamp)> = entries
        .iter()
        .filter_map(|(d, e)| e.stamp.map(|s| (d, e, s)))
        .collect();
    stamped.sort_unstable_by_key(|(_, e, _)| std::cmp::Reverse(e.at));
    let mut out = String::new();
    for (d, e, (size, mtime)) in stamped.into_iter().take(MAX_PERSISTED) {
        let Ok(t) = mtime.duration_since(UNIX_EPOCH) else {
            continue;
        };
        let v = match e.verdict {
            Verdict::Intact => "intact",
            Verdict::Corrupt => "corrupt",
        };
        out.push_str(&format!(
            "{d} {size} {}.{:09} {v}\n",
            t.as_secs(),
            t.subsec_nanos()
        ));
    }
    out
}

fn parse(text: &str) -> HashMap<Digest, Entry> {
    let now = Instant::now();
    let line = |l: &str| -> Option<(Digest, Entry)> {
        let mut w = l.split_whitespace();
        let digest: Digest = w.next()?.parse().ok()?;
        let size: u64 = w.next()?.parse().ok()?;
        let (secs, nanos) = w.next()?.split_once('.')?;
        let mtime =
            UNIX_EPOCH.checked_add(Duration::new(secs.parse().ok()?, nanos.parse().ok()?))?;
        let verdict = match w.next()? {
            "intact" => Verdict::Intact,
            "corrupt" => Verdict::Corrupt,
            _ => return None,
        };
        Some((
            digest,
            Entry {
                stamp: Some((size, mtime)),
                at: now,
                verdict,
            },
        ))
    };
    text.lines().take(MAX_PERSISTED).filter_map(line).collect()
}

/// Streams `inner` (all `size` bytes of `digest`) while hashing it. The chunk that completes
/// the blob is released only if the digest matches; otherwise, or when the stored blob is
/// shorter or longer than `size`, the stream ends with an error, and `on_verdict` learns the
/// outcome either way (not when the read itself fails or the client goes away).
pub fn checked(
    inner: ByteStream,
    digest: Digest,
    size: u64,
    on_verdict: impl FnOnce(Verdict) + Send + 'static,
) -> ByteStream {
    Box::pin(Checked {
        inner,
        hasher: Sha256Verifier::new(digest),
        size,
        on_verdict: Some(Box::new(on_verdict)),
        ended: false,
    })
}

type OnVerdict = Box<dyn FnOnce(Verdict) + Send>;

struct Checked {
    inner: ByteStream,
    hasher: Sha256Verifier,
    size: u64,
    on_verdict: Option<OnVerdict>,
    ended: bool,
}

impl Checked {
    fn verdict(&mut self, v: Verdict) {
        if let Some(f) = self.on_verdict.take() {
            f(v);
        }
    }

    fn damaged(&mut self) -> Poll<Option<io::Result<Bytes>>> {
        self.ended = true;
        self.verdict(Verdict::Corrupt);
        Poll::Ready(Some(Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "local copy does not match its digest",
        ))))
    }
}

impl Stream for Checked {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.ended {
            return Poll::Ready(None);
        }
        match self.inner.as_mut().poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                let seen = self.hasher.bytes_seen() + chunk.len() as u64;
                if seen > self.size {
                    return self.damaged();
                }
                self.hasher.update(&chunk);
                if seen == self.size {
                    if !self.hasher.matches() {
                        return self.damaged();
                    }
                    self.verdict(Verdict::Intact);
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(None) => {
                if self.hasher.bytes_seen() < self.size
                    || (self.size == 0 && !self.hasher.matches())
                {
                    return self.damaged();
                }
                if self.size == 0 {
                    self.verdict(Verdict::Intact);
                }
                self.ended = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                self.ended = true;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    fn chunks(data: &[u8], n: usize) -> ByteStream {
        let v: Vec<io::Result<Bytes>> = data
            .chunks(n)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        Box::pin(futures_util::stream::iter(v))
    }

    async fn run(
        data: &[u8],
        digest: Digest,
        size: u64,
    ) -> (Vec<io::Result<Bytes>>, Option<Verdict>) {
        let got = Arc::new(Mutex::new(None));
        let g = got.clone();
        let s = checked(chunks(data, 1000), digest, size, move |v| {
            *g.lock().unwrap() = Some(v)
        });
        let items: Vec<_> = s.collect().await;
        let v = *got.lock().unwrap();
        (items, v)
    }

    #[tokio::test]
    async fn intact_blob_streams_whole() {
        let data = vec![7u8; 10_500];
        let (items, v) = run(&data, Digest::of(&data), data.len() as u64).await;
        assert!(items.iter().all(|i| i.is_ok()));
        assert_eq!(
            items
                .iter()
                .map(|i| i.as_ref().unwrap().len())
                .sum::<usize>(),
            10_500
        );
        assert_eq!(v, Some(Verdict::Intact));
        let (items, v) = run(b"", Digest::of(b""), 0).await;
        assert!(items.is_empty());
        assert_eq!(v, Some(Verdict::Intact));
    }

    #[tokio::test]
    async fn damaged_blob_never_sends_its_last_chunk() {
        let good = vec![7u8; 10_500];
        let mut bad = good.clone();
        bad[5] ^= 1;
        let (items, v) = run(&bad, Digest::of(&good), 10_500).await;
        assert_eq!(v, Some(Verdict::Corrupt));
        let sent: usize = items
            .iter()
            .filter_map(|i| i.as_ref().ok())
            .map(|b| b.len())
            .sum();
        assert_eq!(sent, 10_000, "only the chunks before the last one go out");
        assert!(items.last().unwrap().is_err());
        // Shorter and longer stored copies are damaged too.
        let (items, v) = run(&good[..9_000], Digest::of(&good), 10_500).await;
        assert!(items.last().unwrap().is_err());
        assert_eq!(v, Some(Verdict::Corrupt));
        let (items, v) = run(&good, Digest::of(&good[..10_000]), 10_000).await;
        assert_eq!(v, Some(Verdict::Intact), "the declared size ends the check");
        assert!(
            items.last().unwrap().is_err(),
            "bytes past the size are refused"
        );
    }

    #[test]
    fn verdicts_persist_per_stamp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("verified.txt");
        let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
        let stamp = Some((1u64, UNIX_EPOCH + Duration::new(1_700_000_000, 123)));
        let v = LocalVerifier::new(Some(path.clone()));
        v.record(a, stamp, Verdict::Intact);
        v.record(b, stamp, Verdict::Corrupt);
        v.record(Digest::of(b"c"), None, Verdict::Intact);
        v.flush().unwrap();
        let again = LocalVerifier::new(Some(path.clone()));
        assert_eq!(again.cached(&a, stamp), Some(Verdict::Intact));
        assert_eq!(again.cached(&b, stamp), Some(Verdict::Corrupt));
        assert_eq!(
            again.cached(&Digest::of(b"c"), None),
            None,
            "unstamped: memory only"
        );
        // A rewritten file (another stamp) needs hashing again.
        let other = Some((1u64, UNIX_EPOCH + Duration::new(1_700_000_001, 0)));
        assert_eq!(again.cached(&a, other), None);
        assert_eq!(again.cached(&a, None), None);
        // A broken file is an empty cache, not a failure.
        std::fs::write(&path, "garbage\nsha256:zz 1 2.3 intact\n").unwrap();
        assert_eq!(LocalVerifier::new(Some(path)).cached(&a, stamp), None);
    }
}
