//! Blobs containerd is downloading right now, seen in its content directory, and a reader that
//! follows such a blob as it grows (issue 11: in-flight advertising and serving).
//!
//! # The layout (containerd's local content store; checked on 1.6, 1.7 and 2.1)
//! A write in progress lives in `<content dir>/ingest/<sha256 hex of the ref string>/` with:
//! - `ref`: the ingest ref, written first (before `data`). A pull's ref, as stored, is
//!   `<namespace>/<n>/<kind>-sha256:<hex>`, e.g. `k8s.io/1/layer-sha256:8c19..`: containerd's
//!   metadata store prefixes the namespace and a counter to the client's ref, and the client's
//!   ref is containerd's `remotes.MakeRefKey` (`manifest`, `index`, `config`, `layer` or
//!   `unknown`). Measured the same on 1.6 and 1.7 (`ctr images pull`) and 2.1 (the transfer
//!   service, also with `concurrent_layer_fetch_buffer`, whose parallel ranged requests still
//!   fill one `data` in order). Other writers (push, import, converters, BuildKit) use other
//!   shapes, so only a ref ending in `-sha256:<64 hex>` (or that is a bare digest) is taken to
//!   name a digest; anything else is ignored.
//! - `startedat`, `updatedat`: timestamps (written with a `.tmp` + rename).
//! - `total`: the expected size in decimal, written after `ref` and before `data` is created, and
//!   only when the writer was given a size. Every pull gives the descriptor's size, so a pull's
//!   ingest had `total` on 1.6, 1.7 and 2.1; a writer opened without one has none. So: `data`
//!   present and `total` absent means unknown.
//! - `data`: the bytes so far, appended in order (a resumed download may be truncated and
//!   rewritten from an offset; a reader positioned past the end simply waits). On 1.6 and 1.7
//!   the pulling client copies through a 1 MiB buffer filled to the brim before each write, so
//!   `data` grows in 1 MiB steps (0 bytes for the first 800 ms at 1.3 MB/s); on 2.1 the
//!   transfer service writes as bytes arrive.
//!
//! On commit containerd renames `data` to `blobs/sha256/<hex>` (the same inode) and removes the
//! directory; if the blob already exists it just removes the directory. An aborted write is
//! removed (`Abort`) or left behind: killing the pulling `ctr` mid-layer left the dir in place on
//! 1.6, 1.7 and 2.1 (a later pull of the same ref resumes it). A left-over stops changing, so one
//! whose `data` has not been modified for [`IngestWatcher::with_stale`] is reported ended, and a
//! [`follow`] of it fails with `TimedOut` after its `stall`.

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsString;
use std::io::{self, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::READ_CHUNK;
use crate::content::ByteStream;
use crate::oci::Digest;
use crate::sync::RwLockExt;

/// How often the ingest dir is listed by default: advertising within ~100 ms is the goal.
pub const DEFAULT_POLL: Duration = Duration::from_millis(50);
/// A left-over ingest (containerd died mid-pull) stops changing; after this it is not in flight.
pub const DEFAULT_STALE: Duration = Duration::from_secs(30);
/// How often a followed `data` file is checked for growth.
const FOLLOW_POLL: Duration = Duration::from_millis(20);
/// Staleness needs a stat per ingest; once a second is plenty for a 30 s threshold.
const STALE_CHECK: Duration = Duration::from_secs(1);
/// A dir without a readable `ref` (or without `total`/`data` yet) is retried this many polls:
/// containerd creates the dir first and its files just after.
const PENDING_POLLS: u32 = 100;
/// Subscribers that fall further behind than this lose events (and can resync with `current`).
const EVENT_QUEUE: usize = 256;
/// `ref` and `total` are tiny; anything bigger is not containerd's.
const SMALL_FILE: u64 = 4096;

/// One blob in flight: the digest its ref names, one of its ingest dirs, and its expected size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ingest {
    pub digest: Digest,
    pub dir: PathBuf,
    pub total: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IngestEvent {
    /// The first ingest naming `digest` appeared.
    Started { digest: Digest, total: Option<u64> },
    /// The last ingest naming `digest` went away (committed, aborted or stale).
    Ended { digest: Digest },
}

/// Why a [`follow`] stream failed; carried inside the stream's `io::Error`.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    #[error("bytes {start}-{end} are not within {digest}'s {total:?} bytes")]
    Range {
        digest: Digest,
        start: u64,
        end: u64,
        total: Option<u64>,
    },
    #[error("the ingest of {0} went away before completion and no complete blob was committed")]
    Aborted(Digest),
    #[error("the ingest of {digest} made no progress for {stall:?}")]
    Stalled { digest: Digest, stall: Duration },
    #[error("the committed blob {0} is shorter than the range asked for")]
    Short(Digest),
}

impl FollowError {
    fn into_io(self) -> io::Error {
        let kind = match self {
            FollowError::Range { .. } => io::ErrorKind::InvalidInput,
            FollowError::Stalled { .. } => io::ErrorKind::TimedOut,
            FollowError::Aborted(_) | FollowError::Short(_) => io::ErrorKind::UnexpectedEof,
        };
        io::Error::new(kind, self)
    }
}

/// Watches `<content dir>/ingest` by polling and publishes which digests are in flight.
pub struct IngestWatcher {
    content_dir: PathBuf,
    poll: Duration,
    stale: Duration,
    events: broadcast::Sender<IngestEvent>,
    /// What is in flight, by digest; written by `run` only.
    current: RwLock<HashMap<Digest, Ingest>>,
}

impl IngestWatcher {
    pub fn new(content_dir: PathBuf, poll: Duration) -> Self {
        let (events, _) = broadcast::channel(EVENT_QUEUE);
        IngestWatcher {
            content_dir,
            poll,
            stale: DEFAULT_STALE,
            events,
            current: RwLock::default(),
        }
    }

    /// An ingest whose `data` was not modified for `stale` is treated as gone until it changes.
    pub fn with_stale(mut self, stale: Duration) -> Self {
        self.stale = stale;
        self
    }

    pub fn subscribe(&self) -> broadcast::Receiver<IngestEvent> {
        self.events.subscribe()
    }

    pub fn get(&self, d: &Digest) -> Option<Ingest> {
        self.current.reading().get(d).cloned()
    }

    pub fn current(&self) -> Vec<Ingest> {
        self.current.reading().values().cloned().collect()
    }

    /// Polls until `shutdown`. The scan does blocking file I/O, so it runs off the async workers;
    /// it lists the dir and reads only the files of dirs it has not classified yet.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tracker = Tracker::new(self.content_dir.join("ingest"), self.stale);
        let mut tick = tokio::time::interval(self.poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let scanned = tokio::task::spawn_blocking(move || {
                let events = tracker.scan(Instant::now(), SystemTime::now());
                (tracker, events)
            })
            .await;
            let events;
            (tracker, events) = match scanned {
                Ok(r) => r,
                // The scan does not panic by design; if it did, forget everything and start
                // over rather than stop watching (the next scan reports what is in flight).
                Err(e) => {
                    tracing::warn!(error = %e, "ingest scan failed; rescanning");
                    let fresh = Tracker::new(self.content_dir.join("ingest"), self.stale);
                    let ended = self
                        .current()
                        .into_iter()
                        .map(|i| IngestEvent::Ended { digest: i.digest })
                        .collect();
                    (fresh, ended)
                }
            };
            // A dir can come or go without an event (a second pull of one blob): the map that
            // `get` answers from must still name a dir that exists.
            if std::mem::take(&mut tracker.changed) || !events.is_empty() {
                self.publish(tracker.snapshot(), events);
            }
        }
    }

    fn publish(&self, snapshot: HashMap<Digest, Ingest>, events: Vec<IngestEvent>) {
        // The map is updated before the events go out, so a subscriber that reacts to Started
        // by calling `get` finds the ingest.
        *self.current.writing() = snapshot;
        for ev in events {
            tracing::debug!(event = ?ev, "containerd ingest");
            // No subscriber is fine: the map is still current.
            let _ = self.events.send(ev);
        }
    }
}

/// What one ingest dir turned out to be.
enum Entry {
    /// Its files are not all there yet: retried on later polls.
    Pending {
        polls: u32,
    },
    /// Not a digest ref, or never completed its files: never looked at again.
    Ignored,
    Active(Seen),
    /// Unchanged for too long; becomes active again if `data` changes.
    Stale(Seen),
}

struct Seen {
    digest: Digest,
    total: Option<u64>,
}

/// The state of the ingest dir between polls: sync, so it can be tested without a runtime.
struct Tracker {
    ingest_dir: PathBuf,
    stale: Duration,
    entries: HashMap<OsString, Entry>,
    /// Active dirs per digest: two pulls of one blob have two refs and so two dirs.
    by_digest: HashMap<Digest, BTreeSet<OsString>>,
    last_stale_check: Option<Instant>,
    /// Set when `by_digest` changed, so the published map is rebuilt.
    changed: bool,
}

impl Tracker {
    fn new(ingest_dir: PathBuf, stale: Duration) -> Self {
        Tracker {
            ingest_dir,
            stale,
            entries: HashMap::new(),
            by_digest: HashMap::new(),
            last_stale_check: None,
            changed: false,
        }
    }

    /// One poll: returns what changed. Every error is a race with containerd (or an ingest dir
    /// that does not exist yet) and means "nothing there", so none is returned.
    fn scan(&mut self, now: Instant, wall: SystemTime) -> Vec<IngestEvent> {
        let mut events = Vec::new();
        let names: BTreeSet<OsString> = match std::fs::read_dir(&self.ingest_dir) {
            Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.file_name())).collect(),
            Err(_) => BTreeSet::new(),
        };
        let gone: Vec<OsString> = self
            .entries
            .keys()
            .filter(|n| !names.contains(*n))
            .cloned()
            .collect();
        for name in gone {
            if let Some(Entry::Active(seen)) = self.entries.remove(&name) {
                self.deactivate(&name, seen.digest, &mut events);
            }
        }
        let check_stale = self
            .last_stale_check
            .is_none_or(|t| now.duration_since(t) >= STALE_CHECK);
        if check_stale {
            self.last_stale_check = Some(now);
        }
        for name in names {
            let entry = self
                .entries
                .remove(&name)
                .unwrap_or(Entry::Pending { polls: 0 });
            let dir = self.ingest_dir.join(&name);
            let next = match entry {
                Entry::Pending { polls } => match classify(&dir) {
                    Classified::Digest(seen) if self.is_fresh(&dir, wall) => {
                        self.activate(&name, &seen, &mut events);
                        Entry::Active(seen)
                    }
                    Classified::Digest(seen) => Entry::Stale(seen),
                    Classified::NotDigest => Entry::Ignored,
                    Classified::NotYet if polls + 1 >= PENDING_POLLS => Entry::Ignored,
                    Classified::NotYet => Entry::Pending { polls: polls + 1 },
                },
                Entry::Active(seen) if check_stale && !self.is_fresh(&dir, wall) => {
                    self.deactivate(&name, seen.digest, &mut events);
                    Entry::Stale(seen)
                }
                Entry::Stale(seen) if check_stale && self.is_fresh(&dir, wall) => {
                    self.activate(&name, &seen, &mut events);
                    Entry::Active(seen)
                }
                other => other,
            };
            self.entries.insert(name, next);
        }
        events
    }

    /// Whether `data` changed within the stale window (a missing `data` is not fresh: the dir
    /// is being removed).
    fn is_fresh(&self, dir: &Path, wall: SystemTime) -> bool {
        std::fs::metadata(dir.join("data"))
            .and_then(|m| m.modified())
            .map(|m| wall.duration_since(m).map_or(true, |age| age < self.stale))
            .unwrap_or(false)
    }

    fn activate(&mut self, name: &OsString, seen: &Seen, events: &mut Vec<IngestEvent>) {
        self.changed = true;
        let dirs = self.by_digest.entry(seen.digest).or_default();
        if dirs.is_empty() {
            events.push(IngestEvent::Started {
                digest: seen.digest,
                total: seen.total,
            });
        }
        dirs.insert(name.clone());
    }

    fn deactivate(&mut self, name: &OsString, digest: Digest, events: &mut Vec<IngestEvent>) {
        self.changed = true;
        if let Some(dirs) = self.by_digest.get_mut(&digest) {
            dirs.remove(name);
            if dirs.is_empty() {
                self.by_digest.remove(&digest);
                events.push(IngestEvent::Ended { digest });
            }
        }
    }

    fn snapshot(&self) -> HashMap<Digest, Ingest> {
        let mut out = HashMap::new();
        for (digest, dirs) in &self.by_digest {
            // Any dir serves; one that knows the size is more useful.
            let mut best: Option<Ingest> = None;
            for name in dirs {
                if let Some(Entry::Active(seen)) = self.entries.get(name) {
                    let candidate = Ingest {
                        digest: *digest,
                        dir: self.ingest_dir.join(name),
                        total: seen.total,
                    };
                    if best.as_ref().is_none_or(|b| b.total.is_none()) {
                        best = Some(candidate);
                    }
                }
            }
            if let Some(b) = best {
                out.insert(*digest, b);
            }
        }
        out
    }
}

enum Classified {
    Digest(Seen),
    NotDigest,
    NotYet,
}

fn classify(dir: &Path) -> Classified {
    // containerd writes `ref` and then `total` (each created, then written) before it creates
    // `data`. Until `data` exists either may be missing or still empty, and an empty `ref`
    // taken for "not a digest" would ignore the dir for good: the download would never be
    // served in flight (a rollout's followers then wait for its end). Once `data` exists, a
    // missing `total` means the size is unknown.
    if !dir.join("data").exists() {
        return Classified::NotYet;
    }
    let Some(reference) = read_small(&dir.join("ref")) else {
        return Classified::NotYet;
    };
    let Some(digest) = digest_of_ref(&reference) else {
        return Classified::NotDigest;
    };
    let total = match read_small(&dir.join("total")) {
        Some(t) => match t.trim().parse::<u64>() {
            Ok(n) => Some(n),
            Err(_) => return Classified::NotDigest,
        },
        None => None,
    };
    Classified::Digest(Seen { digest, total })
}

fn read_small(path: &Path) -> Option<String> {
    use std::io::Read;
    let file = std::fs::File::open(path).ok()?;
    let mut s = String::new();
    file.take(SMALL_FILE).read_to_string(&mut s).ok()?;
    Some(s)
}

/// The digest a ref names: `sha256:<hex>` alone or after a `-` (`layer-sha256:<hex>`).
fn digest_of_ref(reference: &str) -> Option<Digest> {
    let at = reference.rfind("sha256:")?;
    if at > 0 && !reference[..at].ends_with('-') {
        return None;
    }
    reference[at..].parse().ok()
}

/// Streams bytes `start..=end` of an in-flight blob, following `data` as it grows; see the
/// module doc for what happens on commit and abort.
pub fn follow(
    ingest: &Ingest,
    content_dir: &Path,
    start: u64,
    end: u64,
    stall: Duration,
) -> ByteStream {
    let state = Follow {
        digest: ingest.digest,
        data: ingest.dir.join("data"),
        blob: content_dir.join("blobs/sha256").join(ingest.digest.hex()),
        total: ingest.total,
        file: None,
        committed: false,
        pos: start,
        start,
        end,
        stall,
        last_progress: Instant::now(),
        buf: BytesMut::new(),
    };
    Box::pin(futures_util::stream::try_unfold(state, Follow::step))
}

struct Follow {
    digest: Digest,
    data: PathBuf,
    blob: PathBuf,
    total: Option<u64>,
    file: Option<tokio::fs::File>,
    /// Reading the committed blob rather than the ingest's `data`.
    committed: bool,
    pos: u64,
    start: u64,
    end: u64,
    stall: Duration,
    last_progress: Instant,
    /// Reused between reads: waiting at the end of `data` must not allocate each poll.
    buf: BytesMut,
}

impl Follow {
    async fn step(mut self) -> io::Result<Option<(Bytes, Follow)>> {
        // Checked first (each step; it is cheap): an empty or out-of-bounds range is an error,
        // never a clean empty answer.
        if self.start > self.end || self.total.is_some_and(|t| self.end >= t) {
            return Err(FollowError::Range {
                digest: self.digest,
                start: self.start,
                end: self.end,
                total: self.total,
            }
            .into_io());
        }
        if self.pos > self.end {
            return Ok(None);
        }
        loop {
            if self.file.is_none() {
                self.open().await?;
            }
            let want = (self.end - self.pos + 1).min(READ_CHUNK as u64);
            self.buf.reserve(READ_CHUNK);
            let n = match self.file.as_mut() {
                Some(f) => f.take(want).read_buf(&mut self.buf).await?,
                None => 0,
            };
            if n > 0 {
                self.pos += n as u64;
                self.last_progress = Instant::now();
                let chunk = self.buf.split().freeze();
                return Ok(Some((chunk, self)));
            }
            // At the end of what exists. The open fd keeps reading the same inode across a
            // commit (a rename), so EOF here means "not written yet", "aborted" or "short".
            if self.committed {
                return Err(FollowError::Short(self.digest).into_io());
            }
            if tokio::fs::metadata(&self.data).await.is_err() {
                // Gone: committed (the blob is complete) or aborted (it is not).
                self.switch_to_blob().await?;
                continue;
            }
            if self.last_progress.elapsed() >= self.stall {
                return Err(FollowError::Stalled {
                    digest: self.digest,
                    stall: self.stall,
                }
                .into_io());
            }
            tokio::time::sleep(FOLLOW_POLL).await;
        }
    }

    async fn open(&mut self) -> io::Result<()> {
        match tokio::fs::File::open(&self.data).await {
            Ok(mut f) => {
                f.seek(SeekFrom::Start(self.pos)).await?;
                self.file = Some(f);
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => self.switch_to_blob().await,
            Err(e) => Err(e),
        }
    }

    /// The ingest is gone: continue from the committed blob if it is complete, else fail.
    async fn switch_to_blob(&mut self) -> io::Result<()> {
        let complete = match tokio::fs::metadata(&self.blob).await {
            // Without a known total the asker's digest check is the only guard; the blob must
            // at least hold the range.
            Ok(m) => self.total.map_or(m.len() > self.end, |t| m.len() == t),
            Err(_) => false,
        };
        if !complete {
            return Err(FollowError::Aborted(self.digest).into_io());
        }
        let mut f = tokio::fs::File::open(&self.blob)
            .await
            .map_err(|_| FollowError::Aborted(self.digest).into_io())?;
        f.seek(SeekFrom::Start(self.pos)).await?;
        self.file = Some(f);
        self.committed = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
