//! The spool: one verified download per blob per node, shared by every request for it.
//!
//! Concurrent requests for the same digest (ranged chunks, several local clients, peers)
//! [`Spool::claim`] it: the first gets a [`Writer`] and runs the download, the others an
//! [`Entry`] to read from. The bytes go to `<dir>/<hex>` as they arrive; every
//! [`Entry::reader`] sends what exists, then follows the growing file, and holds back the last
//! bytes of its window until the writer has checked the whole blob's sha256. So no
//! response made of unverified bytes ever completes, ranged ones included. The [`Writer`]
//! hashes what it writes, on a blocking thread, one batch behind the network: the caller
//! gathers the next batch while the previous one is hashed and written.
//!
//! Space is reserved when the size is known ([`Writer::start`]), within a budget; when it is
//! full, verified entries nobody reads are evicted, least recently used first. An entry leaves
//! the spool when containerd has committed the blob ([`Spool::remove`]), when it is evicted, or
//! when its download fails; its file is unlinked then, and readers already holding the entry
//! keep reading through the open file.

mod reader;
#[cfg(test)]
mod tests;
mod writer;

use std::collections::{HashMap, VecDeque};
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::watch;

use crate::content::{ByteStream, Descriptor};
use crate::oci::Digest;
use crate::sync::MutexExt;

#[cfg(test)]
use writer::WRITE_BATCH;
pub use writer::Writer;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("cannot prepare the spool directory {path}: {source}; check --data-dir")]
    Dir { path: PathBuf, source: io::Error },
    #[error(
        "a {size}-byte blob does not fit in the spool ({max} bytes, the rest held by downloads \
         and readers); raise --spool-max-bytes"
    )]
    NoRoom { size: u64, max: u64 },
    #[error("cannot create the spool file {path}: {source}")]
    File { path: PathBuf, source: io::Error },
    #[error("the spool writer was already started")]
    AlreadyStarted,
    #[error("the spool entry has already ended: {0}")]
    Ended(Failure),
}

impl SpoolError {
    /// The blob does not fit: the caller streams it without the spool.
    pub fn is_no_room(&self) -> bool {
        matches!(self, SpoolError::NoRoom { .. })
    }
}

/// Why a download ended without a verified blob. Readers see it as their stream's error.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    #[error("no provider has the blob")]
    NotFound,
    #[error("the blob does not fit in the spool")]
    NoRoom,
    #[error("the downloaded bytes do not match the digest")]
    Mismatch,
    #[error("the download was abandoned")]
    Aborted,
    #[error("timed out waiting for the download")]
    Timeout,
    #[error("fetching from peers failed: {0}")]
    Fetch(String),
    #[error("spool I/O error: {0}")]
    Io(String),
}

/// Where an entry's download stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Claimed; no provider has answered yet, so the size is unknown.
    Connecting,
    /// Bytes are arriving; the last bytes of every reader are held back.
    Downloading,
    /// Every byte is in the file and matched the digest.
    Verified,
    Failed(Failure),
}

/// What the spool holds, for metrics and status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Bytes reserved by live entries (their full sizes, written or not).
    pub reserved: u64,
    pub max: u64,
    pub entries: usize,
    /// Entries connecting or downloading.
    pub downloading: usize,
    /// Open reader streams over live entries.
    pub readers: usize,
}

/// The outcome of [`Spool::claim`].
pub enum Claim {
    /// Someone is already fetching (or has verified) the blob: read from it.
    Existing(Arc<Entry>),
    /// The caller runs the download through the only [`Writer`].
    New(Arc<Entry>, Writer),
}

pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    slots: HashMap<Digest, Slot>,
    reserved: u64,
    /// A logical clock for least-recently-used order.
    clock: u64,
    /// Tells entries of the same digest apart, so a late writer never removes its successor.
    next_generation: u64,
}

struct Slot {
    entry: Arc<Entry>,
    used: u64,
    /// When it was last asked for (for [`Spool::expire_idle`]).
    touched: Instant,
    reserved: u64,
}

impl Slot {
    fn evictable(&self) -> bool {
        self.entry.phase() == Phase::Verified && self.entry.readers() == 0
    }
}

impl Spool {
    /// Creates `dir` (0700) and deletes leftovers of a previous run in it: their downloads
    /// were never completed or verified by this process. `max_bytes` bounds all entries' sizes.
    pub fn new(dir: PathBuf, max_bytes: u64) -> Result<Arc<Spool>, SpoolError> {
        let dir_err = |source| SpoolError::Dir {
            path: dir.clone(),
            source,
        };
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(dir_err)?;
        // The directory may predate us with a wider mode; in-flight blobs are not for others.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).map_err(dir_err)?;
        for item in fs::read_dir(&dir).map_err(dir_err)? {
            let item = item.map_err(dir_err)?;
            let path = item.path();
            let gone = if item.file_type().map_err(dir_err)?.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            gone.map_err(dir_err)?;
        }
        Ok(Arc::new(Spool {
            dir,
            max_bytes,
            state: Mutex::new(State::default()),
        }))
    }

    /// The live entry (connecting, downloading or verified) if any; marks it recently used.
    pub fn get(&self, d: &Digest) -> Option<Arc<Entry>> {
        let mut st = self.state.locked();
        st.clock += 1;
        let now = st.clock;
        let slot = st.slots.get_mut(d)?;
        slot.used = now;
        slot.touched = Instant::now();
        Some(slot.entry.clone())
    }

    /// The existing entry, or a new one plus its only [`Writer`] (the caller runs the download).
    pub fn claim(self: &Arc<Self>, d: Digest) -> Claim {
        let mut st = self.state.locked();
        st.clock += 1;
        let now = st.clock;
        if let Some(slot) = st.slots.get_mut(&d) {
            if !slot.entry.damaged.load(Ordering::Relaxed) {
                slot.used = now;
                slot.touched = Instant::now();
                return Claim::Existing(slot.entry.clone());
            }
            // Its file lost bytes: a new request (a client's `Range` resume) starts afresh.
            self.drop_slot(&mut st, &d);
        }
        st.next_generation += 1;
        let entry = Arc::new(Entry {
            digest: d,
            generation: st.next_generation,
            progress: watch::Sender::new(Progress::default()),
            file: OnceLock::new(),
            readers: AtomicUsize::new(0),
            damaged: AtomicBool::new(false),
            recent: Mutex::new(VecDeque::new()),
        });
        st.slots.insert(
            d,
            Slot {
                entry: entry.clone(),
                used: now,
                touched: Instant::now(),
                reserved: 0,
            },
        );
        let writer = Writer::new(self.clone(), entry.clone());
        Claim::New(entry, writer)
    }

    /// Forgets the entry (containerd committed the blob): its file is unlinked and its space
    /// released. Readers holding the entry keep reading through the open file, and a download
    /// still running keeps feeding them.
    pub fn remove(&self, d: &Digest) {
        let mut st = self.state.locked();
        self.drop_slot(&mut st, d);
    }

    /// Drops verified entries nobody has asked for in `idle` and nobody reads: a pull that
    /// was abandoned before containerd committed the blob would otherwise keep its copy (and
    /// its in-flight record) until the spool is full.
    pub fn expire_idle(&self, idle: Duration) -> Vec<Digest> {
        let mut st = self.state.locked();
        let old: Vec<Digest> = st
            .slots
            .iter()
            .filter(|(_, s)| s.evictable() && s.touched.elapsed() >= idle)
            .map(|(d, _)| *d)
            .collect();
        for d in &old {
            self.drop_slot(&mut st, d);
        }
        old
    }

    pub fn usage(&self) -> Usage {
        let st = self.state.locked();
        let mut u = Usage {
            reserved: st.reserved,
            max: self.max_bytes,
            entries: st.slots.len(),
            ..Usage::default()
        };
        for slot in st.slots.values() {
            if matches!(slot.entry.phase(), Phase::Connecting | Phase::Downloading) {
                u.downloading += 1;
            }
            u.readers += slot.entry.readers();
        }
        u
    }

    /// Every live entry with its phase, for status and advertising.
    pub fn digests(&self) -> Vec<(Digest, Phase)> {
        let st = self.state.locked();
        st.slots
            .iter()
            .map(|(d, slot)| (*d, slot.entry.phase()))
            .collect()
    }

    fn path(&self, d: &Digest) -> PathBuf {
        self.dir.join(d.hex())
    }

    /// Whether `entry` is the one the spool holds for its digest (not a removed predecessor).
    fn holds(st: &State, entry: &Entry) -> bool {
        st.slots
            .get(&entry.digest)
            .is_some_and(|s| s.entry.generation == entry.generation)
    }

    /// Reserves `size` bytes for `entry`, evicting idle verified entries as needed, and creates
    /// its file. Paths are created and unlinked only under the lock, so an entry never unlinks
    /// the file of a newer entry for the same digest, and a removal never misses a file.
    fn reserve(&self, entry: &Entry, size: u64) -> Result<(), SpoolError> {
        let mut st = self.state.locked();
        if !Self::holds(&st, entry) {
            // Removed before its size was known: its holders can still read it, through a
            // file nobody else can reach by name.
            let path = self
                .dir
                .join(format!("{}.{}", entry.digest.hex(), entry.generation));
            let file = create(&path)?;
            unlink(&path);
            let _ = entry.file.set(Arc::new(file));
            return Ok(());
        }
        let no_room = SpoolError::NoRoom {
            size,
            max: self.max_bytes,
        };
        if size > self.max_bytes {
            return Err(no_room);
        }
        while st.reserved + size > self.max_bytes {
            let victim = st
                .slots
                .iter()
                .filter(|(_, s)| s.evictable())
                .min_by_key(|(_, s)| s.used)
                .map(|(d, _)| *d);
            match victim {
                Some(d) => {
                    tracing::debug!(digest = %d, "spool full: evicting the least recently used blob");
                    self.drop_slot(&mut st, &d);
                }
                None => return Err(no_room),
            }
        }
        let file = create(&self.path(&entry.digest))?;
        // Only the writer reserves, once (its `start` refuses a second call).
        let _ = entry.file.set(Arc::new(file));
        if let Some(slot) = st.slots.get_mut(&entry.digest) {
            slot.reserved = size;
        }
        st.reserved += size;
        Ok(())
    }

    /// Drops `entry` from the spool if it is still the one held for its digest.
    fn forget(&self, entry: &Entry) {
        let mut st = self.state.locked();
        if Self::holds(&st, entry) {
            self.drop_slot(&mut st, &entry.digest);
        }
    }

    fn drop_slot(&self, st: &mut State, d: &Digest) {
        if let Some(slot) = st.slots.remove(d) {
            st.reserved -= slot.reserved;
            // The file exists once the writer started (set under this lock).
            if slot.entry.file.get().is_some() {
                unlink(&self.path(d));
            }
        }
    }
}

fn create(path: &Path) -> Result<File, SpoolError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| SpoolError::File {
            path: path.to_path_buf(),
            source,
        })
}

fn unlink(path: &Path) {
    if let Err(e) = fs::remove_file(path)
        && e.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), error = %e, "cannot delete a spool file");
    }
}

/// What readers are told each time the download moves.
#[derive(Clone, Debug)]
struct Progress {
    phase: Phase,
    /// Bytes in the file, from offset 0.
    written: u64,
    size: Option<u64>,
    media_type: Option<String>,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            phase: Phase::Connecting,
            written: 0,
            size: None,
            media_type: None,
        }
    }
}

/// One blob's download in the spool, shared by its writer and readers.
pub struct Entry {
    digest: Digest,
    generation: u64,
    /// Held here, so readers' receivers never see the channel closed while they hold the entry.
    progress: watch::Sender<Progress>,
    /// Set once, before the phase leaves `Connecting`; read with positioned reads, so an
    /// unlinked file still serves everyone holding the entry.
    file: OnceLock<Arc<File>>,
    readers: AtomicUsize,
    /// A reader found the file truncated under the download (an operator, a cleanup): its
    /// bytes can no longer be trusted, so the spool stops handing it out.
    damaged: AtomicBool,
    /// The last batches written while downloading, `(offset, bytes)` in order: a reader
    /// following the download takes its bytes from here instead of reading the file back.
    recent: Mutex<VecDeque<(u64, Bytes)>>,
}

impl Entry {
    pub fn digest(&self) -> Digest {
        self.digest
    }

    pub fn phase(&self) -> Phase {
        self.progress.borrow().phase.clone()
    }

    /// Open reader streams.
    pub fn readers(&self) -> usize {
        self.readers.load(Ordering::Relaxed)
    }

    /// Waits (at most `timeout`) until the size is known: the blob's descriptor, or why not.
    pub async fn descriptor(&self, timeout: Duration) -> Result<Descriptor, Failure> {
        let mut rx = self.progress.subscribe();
        let wait = rx.wait_for(|p| p.size.is_some() || matches!(p.phase, Phase::Failed(_)));
        let p = match tokio::time::timeout(timeout, wait).await {
            Err(_) => return Err(Failure::Timeout),
            Ok(Err(_)) => return Err(Failure::Aborted),
            Ok(Ok(p)) => p,
        };
        match (&p.phase, p.size, &p.media_type) {
            (Phase::Failed(why), _, _) => Err(why.clone()),
            (_, Some(size), Some(media_type)) => Ok(Descriptor {
                digest: self.digest,
                size,
                media_type: media_type.clone(),
            }),
            _ => Err(Failure::Aborted),
        }
    }

    /// Waits (at most `timeout`) until the blob is verified or its download failed.
    pub async fn settled(&self, timeout: Duration) -> Result<(), Failure> {
        let mut rx = self.progress.subscribe();
        let wait = rx.wait_for(|p| matches!(p.phase, Phase::Verified | Phase::Failed(_)));
        match tokio::time::timeout(timeout, wait).await {
            Err(_) => Err(Failure::Timeout),
            Ok(Err(_)) => Err(Failure::Aborted),
            Ok(Ok(p)) => match &p.phase {
                Phase::Failed(why) => Err(why.clone()),
                _ => Ok(()),
            },
        }
    }

    /// Bytes `start..=end` as a stream: what exists at once, then the growing file. The last
    /// bytes of the window come only once the blob is verified; on failure the stream ends
    /// with an error; with no progress for `stall` it gives up with `TimedOut`.
    pub fn reader(self: &Arc<Self>, start: u64, end: u64, stall: Duration) -> ByteStream {
        reader::stream(self.clone(), start, end, stall)
    }

    /// Bytes `pos..until` (at most) from the recent batches, without a copy: `None` if `pos`
    /// is not in them. Only bytes already published as written are ever there.
    fn recent_slice(&self, pos: u64, until: u64) -> Option<Bytes> {
        let recent = self.recent.locked();
        let (off, data) = recent
            .iter()
            .find(|(off, data)| *off <= pos && pos < off + data.len() as u64)?;
        let from = usize::try_from(pos - off).ok()?;
        let to = usize::try_from(until.min(off + data.len() as u64) - off).ok()?;
        (from < to).then(|| data.slice(from..to))
    }
}
