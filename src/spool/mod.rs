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
//!
//! The spool is a feature, never a reason for a response to fail. A blob is spooled only when
//! its filesystem has room for it with headroom (`statvfs`); else it streams unspooled. When a
//! write fails mid-download (ENOSPC, EIO, EROFS, quota), the same download goes on without the
//! file: the writer keeps hashing the peer's bytes and hands later batches to the readers from
//! memory (the file's earlier bytes stay intact for the readers behind), and it waits while the
//! slowest reader still needs a batch it would drop, so memory stays bounded. The entry leaves
//! the spool at once (new requests stream unspooled), and for a while no new blob is spooled.

#[cfg(test)]
mod fault_tests;
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
use tokio::sync::{Notify, watch};

use crate::content::{ByteStream, Descriptor};
use crate::metrics::{FaultKind, LocalFaults};
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
    #[error(
        "a {size}-byte blob would leave too little of the spool's filesystem free ({free} bytes \
         free, {pending} more promised to downloads, {headroom} kept free)"
    )]
    NoSpace {
        size: u64,
        free: u64,
        pending: u64,
        headroom: u64,
    },
    #[error("the spool is resting after a write error; blobs stream unspooled meanwhile")]
    Resting,
    #[error("the spool writer was already started")]
    AlreadyStarted,
    #[error("the spool entry has already ended: {0}")]
    Ended(Failure),
}

impl SpoolError {
    /// The blob does not fit (budget, free space, or a recent write error): the caller
    /// streams it without the spool.
    pub fn is_no_room(&self) -> bool {
        matches!(
            self,
            SpoolError::NoRoom { .. } | SpoolError::NoSpace { .. } | SpoolError::Resting
        )
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
    /// Bytes reserved but not yet written (they will still take filesystem space).
    pub pending: u64,
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

/// After a write error, no new blob is spooled for this long (its filesystem is full or
/// failing; trying again at once would only find the same fault).
const WRITE_FAULT_REST: Duration = Duration::from_secs(60);

pub struct Spool {
    dir: PathBuf,
    /// The budget: `--spool-max-bytes`, or less when the filesystem had less room at start.
    max_bytes: u64,
    /// `--spool-max-bytes` as given: a blob within it but beyond `max_bytes` is a space fault.
    configured: u64,
    state: Mutex<State>,
    /// Where write and space faults are counted (the daemon's metrics; else nobody's).
    faults: Arc<LocalFaults>,
    /// Frees of the filesystem, for the space check (a seam for tests).
    space: fn(&Path) -> io::Result<Space>,
}

/// A filesystem's size and what an unprivileged writer may still use, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Space {
    pub total: u64,
    pub available: u64,
}

impl Space {
    /// What to leave free on the filesystem: 2 % of it, between 32 MiB and 1 GiB (logs,
    /// containerd's own writes on a shared disk, and the slack between the check and the
    /// writes).
    pub fn headroom(&self) -> u64 {
        (self.total / 50).clamp(32 << 20, 1 << 30)
    }
}

fn statvfs(dir: &Path) -> io::Result<Space> {
    let v = rustix::fs::statvfs(dir)?;
    Ok(Space {
        total: v.f_blocks.saturating_mul(v.f_frsize),
        available: v.f_bavail.saturating_mul(v.f_frsize),
    })
}

#[derive(Default)]
struct State {
    slots: HashMap<Digest, Slot>,
    reserved: u64,
    /// A logical clock for least-recently-used order.
    clock: u64,
    /// Tells entries of the same digest apart, so a late writer never removes its successor.
    next_generation: u64,
    /// When a write last failed: no new blob is spooled for [`WRITE_FAULT_REST`] after.
    write_fault: Option<Instant>,
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
        Self::with_faults(dir, max_bytes, Arc::default())
    }

    /// [`Spool::new`], counting write and space faults into `faults`. The budget is kept
    /// below what the filesystem has free, with headroom.
    pub fn with_faults(
        dir: PathBuf,
        max_bytes: u64,
        faults: Arc<LocalFaults>,
    ) -> Result<Arc<Spool>, SpoolError> {
        Self::build(dir, max_bytes, faults, statvfs)
    }

    pub(super) fn build(
        dir: PathBuf,
        max_bytes: u64,
        faults: Arc<LocalFaults>,
        space: fn(&Path) -> io::Result<Space>,
    ) -> Result<Arc<Spool>, SpoolError> {
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
        let configured = max_bytes;
        let max_bytes = match space(&dir) {
            Ok(s) => {
                let room = s.available.saturating_sub(s.headroom());
                if room < max_bytes {
                    tracing::warn!(
                        dir = %dir.display(),
                        spool_max_bytes = max_bytes,
                        available = s.available,
                        using = room,
                        "the spool's filesystem has less room than --spool-max-bytes: the spool keeps below it"
                    );
                }
                room.min(max_bytes)
            }
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot tell the spool's free space; each blob is checked when spooled");
                max_bytes
            }
        };
        Ok(Arc::new(Spool {
            dir,
            max_bytes,
            configured,
            state: Mutex::new(State::default()),
            faults,
            space,
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
            recent: Mutex::new(Recent::default()),
            room: Notify::new(),
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
        u.pending = Self::pending(&st);
        u
    }

    /// Reserved bytes not yet in the files: free space the downloads will still take.
    fn pending(st: &State) -> u64 {
        st.slots
            .values()
            .map(|s| s.reserved.saturating_sub(s.entry.progress.borrow().written))
            .sum()
    }

    /// Whether the filesystem has room for `size` more bytes beside what is promised, with
    /// headroom (unknown free space: yes, the write fault path covers it).
    fn check_space(&self, st: &State, size: u64) -> Result<(), SpoolError> {
        let Ok(space) = (self.space)(&self.dir) else {
            return Ok(());
        };
        let pending = Self::pending(st);
        let headroom = space.headroom();
        if size.saturating_add(pending).saturating_add(headroom) > space.available {
            return Err(SpoolError::NoSpace {
                size,
                free: space.available,
                pending,
                headroom,
            });
        }
        Ok(())
    }

    /// A write to `entry`'s file failed: it leaves the spool (its file is unlinked; readers
    /// holding it go on), and no blob is spooled for a while. Counted and logged once per blob.
    fn write_failed(&self, entry: &Entry, offset: u64, error: &io::Error) {
        tracing::warn!(
            digest = %entry.digest,
            offset,
            %error,
            "writing to the spool failed: this download goes on from memory, and blobs stream unspooled for {WRITE_FAULT_REST:?}"
        );
        self.faults.record(
            FaultKind::SpoolWrite,
            format!(
                "writing {} to the spool at byte {offset} failed: {error}",
                entry.digest
            ),
        );
        let mut st = self.state.locked();
        st.write_fault = Some(Instant::now());
        if Self::holds(&st, entry) {
            self.drop_slot(&mut st, &entry.digest);
        }
    }

    /// The faults counter this spool records into.
    pub fn faults(&self) -> &Arc<LocalFaults> {
        &self.faults
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
            if size <= self.configured {
                // It would fit the budget asked for; the filesystem is what lacks room.
                self.faults.record(
                    FaultKind::SpoolSpace,
                    format!(
                        "{} not spooled: {size} bytes, the filesystem leaves the spool {}",
                        entry.digest, self.max_bytes
                    ),
                );
            }
            return Err(no_room);
        }
        if st
            .write_fault
            .is_some_and(|t| t.elapsed() < WRITE_FAULT_REST)
        {
            return Err(SpoolError::Resting);
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
        if let Err(e) = self.check_space(&st, size) {
            tracing::info!(digest = %entry.digest, error = %e, "not spooling this blob");
            self.faults.record(
                FaultKind::SpoolSpace,
                format!("{} not spooled: {e}", entry.digest),
            );
            return Err(e);
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
    /// Bytes the writer has published, from offset 0 (in the file, or in memory past
    /// `file_end`).
    written: u64,
    /// Set when a write failed: only bytes before it are in the file; later ones are only in
    /// the entry's recent batches.
    file_end: Option<u64>,
    size: Option<u64>,
    media_type: Option<String>,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            phase: Phase::Connecting,
            written: 0,
            file_end: None,
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
    /// The last batches written while downloading, and where each reader stands: a reader
    /// following the download takes its bytes from here instead of reading the file back,
    /// and after a write error every reader takes the bytes past the file's end from here.
    recent: Mutex<Recent>,
    /// Woken when a reader moves on or ends: after a write error the writer waits on it for
    /// the slowest reader to be done with a batch it would drop.
    room: Notify,
}

/// The download's head in memory, and the readers' cursors.
#[derive(Default)]
struct Recent {
    /// `(offset, bytes)` in order.
    batches: VecDeque<(u64, Bytes)>,
    /// Each open reader's next byte and the end of its window (exclusive), by reader id.
    cursors: HashMap<u64, (u64, u64)>,
    next_id: u64,
}

impl Recent {
    fn held(&self) -> usize {
        self.batches.iter().map(|(_, b)| b.len()).sum()
    }

    /// Whether some reader has yet to read a byte of the batch `off..off + len` that exists
    /// only in memory (at or past `file_end`; readers read earlier bytes from the file).
    fn needed(&self, off: u64, len: usize, file_end: u64) -> bool {
        let end = off + len as u64;
        off >= file_end
            && self
                .cursors
                .values()
                .any(|&(pos, stop)| pos.max(off) < stop.min(end))
    }

    /// Whether `incoming` more bytes fit under `limit` once the batches nobody needs (from the
    /// oldest) are dropped.
    fn has_room(&self, incoming: usize, limit: usize, file_end: u64) -> bool {
        let mut held = self.held();
        for (off, b) in &self.batches {
            if held + incoming <= limit || self.needed(*off, b.len(), file_end) {
                break;
            }
            held -= b.len();
        }
        held + incoming <= limit
    }
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
    ///
    /// `None` when the blob's spool file failed and the bytes this window needs are no longer
    /// in memory either: the caller streams the blob unspooled (nothing has been sent yet).
    pub fn reader(self: &Arc<Self>, start: u64, end: u64, stall: Duration) -> Option<ByteStream> {
        reader::stream(self.clone(), start, end, stall)
    }

    /// Registers a reader of `start..stop` (`stop` exclusive): its cursor id, or `None` when
    /// bytes it needs are gone (past the file's end after a write error, and already dropped
    /// from memory): the caller streams unspooled instead.
    fn attach(&self, start: u64, stop: u64) -> Option<u64> {
        let mut recent = self.recent.locked();
        {
            let p = self.progress.borrow();
            if let Some(file_end) = p.file_end {
                let first = start.max(file_end);
                let kept_from = recent.batches.front().map_or(p.written, |(off, _)| *off);
                if first < stop && first < p.written && kept_from > first {
                    return None;
                }
            }
        }
        let id = recent.next_id;
        recent.next_id += 1;
        recent.cursors.insert(id, (start, stop));
        Some(id)
    }

    /// Reader `id` needs nothing before `pos` any more.
    fn advance(&self, id: u64, pos: u64) {
        if let Some(c) = self.recent.locked().cursors.get_mut(&id) {
            c.0 = pos;
        }
        self.room.notify_waiters();
    }

    /// Reader `id` ended.
    fn detach(&self, id: u64) {
        self.recent.locked().cursors.remove(&id);
        self.room.notify_waiters();
    }

    /// Bytes `pos..until` (at most) from the recent batches, without a copy: `None` if `pos`
    /// is not in them. Only bytes already published as written are ever there.
    fn recent_slice(&self, pos: u64, until: u64) -> Option<Bytes> {
        let recent = self.recent.locked();
        let (off, data) = recent
            .batches
            .iter()
            .find(|(off, data)| *off <= pos && pos < off + data.len() as u64)?;
        let from = usize::try_from(pos - off).ok()?;
        let to = usize::try_from(until.min(off + data.len() as u64) - off).ok()?;
        (from < to).then(|| data.slice(from..to))
    }
}
