//! The index of what this node can serve: keys (digests, tags, partials), blobs and images.

use std::collections::{HashMap, HashSet};
use std::sync::RwLock;

use tokio::sync::broadcast;

use super::Descriptor;
use crate::oci::{Digest, TagKey};
use crate::sync::RwLockExt;

/// A key this node can serve and advertises: a content digest or a fully qualified tag.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Key {
    Digest(Digest),
    Tag(TagKey),
    /// A blob this node is still downloading (its mirror's spool, or containerd's ingest from
    /// the upstream): servable as it grows. A separate record, so askers can prefer complete
    /// copies; never in the index.
    Partial(Digest),
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Key::Digest(d) => d.fmt(f),
            Key::Tag(t) => t.fmt(f),
            Key::Partial(d) => write!(f, "partial:{d}"),
        }
    }
}

/// A key appeared in or disappeared from the index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IndexChange {
    Added(Key),
    Removed(Key),
}

/// The in-memory view of what the node holds. Cheap to query from request handlers: one
/// short read lock, no I/O.
pub struct Index {
    state: RwLock<State>,
    changes: broadcast::Sender<IndexChange>,
}

#[derive(Default)]
struct State {
    blobs: HashMap<Digest, Blob>,
    images: HashMap<String, ImageEntry>,
    tags: HashMap<TagKey, Digest>,
}

struct Blob {
    size: u64,
    media_type: String,
    /// How many indexed images reference it; the entry goes when the last one does.
    refs: u32,
}

struct ImageEntry {
    tag: Option<TagKey>,
    digests: Vec<Digest>,
}

/// One image as the indexer walked it: its tag (if its name has one), target and present blobs.
#[derive(Clone, Debug)]
pub struct WalkedImage {
    pub name: String,
    pub tag: Option<TagKey>,
    pub target: Digest,
    pub blobs: Vec<Descriptor>,
}

impl Default for Index {
    fn default() -> Self {
        Self::new()
    }
}

impl Index {
    pub fn new() -> Self {
        Index {
            state: RwLock::default(),
            changes: broadcast::channel(4096).0,
        }
    }

    /// Changes from now on. A receiver that lags should take a fresh [`Index::keys`] snapshot.
    pub fn subscribe(&self) -> broadcast::Receiver<IndexChange> {
        self.changes.subscribe()
    }

    pub fn stat(&self, digest: &Digest) -> Option<Descriptor> {
        self.state.reading().blobs.get(digest).map(|b| Descriptor {
            digest: *digest,
            size: b.size,
            media_type: b.media_type.clone(),
        })
    }

    pub fn resolve(&self, tag: &TagKey) -> Option<Digest> {
        self.state.reading().tags.get(tag).copied()
    }

    /// Every key the node can serve now.
    pub fn keys(&self) -> Vec<Key> {
        keys_locked(&self.state.reading()).into_iter().collect()
    }

    pub fn blob_count(&self) -> usize {
        self.state.reading().blobs.len()
    }

    pub fn tag_count(&self) -> usize {
        self.state.reading().tags.len()
    }

    pub fn image_count(&self) -> usize {
        self.state.reading().images.len()
    }

    /// Add or replace one image.
    pub fn set_image(&self, image: WalkedImage) {
        let mut changes = Vec::new();
        {
            let mut s = self.state.writing();
            remove_image_locked(&mut s, &image.name, &mut changes);
            add_image_locked(&mut s, image, &mut changes);
        }
        self.emit(changes);
    }

    pub fn remove_image(&self, name: &str) {
        let mut changes = Vec::new();
        remove_image_locked(&mut self.state.writing(), name, &mut changes);
        self.emit(changes);
    }

    /// The store deleted a blob: stop serving it, even if images still name it.
    /// A blob committed before any image names it (containerd 2.1+ content events): served and
    /// advertised at once. It is dropped when an image that came to include it goes, or when the
    /// content is deleted (a full listing keeps it while the store still has it).
    pub fn add_blob(&self, desc: Descriptor) {
        let added = {
            let mut s = self.state.writing();
            let mut added = false;
            s.blobs.entry(desc.digest).or_insert_with(|| {
                added = true;
                Blob {
                    size: desc.size,
                    media_type: desc.media_type,
                    refs: 0,
                }
            });
            added
        };
        if added {
            self.emit(vec![IndexChange::Added(Key::Digest(desc.digest))]);
        }
    }

    pub fn remove_content(&self, digest: &Digest) {
        let removed = self.state.writing().blobs.remove(digest).is_some();
        if removed {
            self.emit(vec![IndexChange::Removed(Key::Digest(*digest))]);
        }
    }

    /// Blobs held without any image naming them yet (see [`Index::add_blob`]).
    pub fn loose_blobs(&self) -> Vec<Descriptor> {
        self.state
            .reading()
            .blobs
            .iter()
            .filter(|(_, b)| b.refs == 0)
            .map(|(d, b)| Descriptor {
                digest: *d,
                size: b.size,
                media_type: b.media_type.clone(),
            })
            .collect()
    }

    /// Replace the whole index (after a full listing), emitting only the differences. `loose`
    /// are blobs the store still holds that no image names yet (an image still being pulled).
    pub fn replace_all(&self, images: Vec<WalkedImage>, loose: Vec<Descriptor>) {
        let mut changes = Vec::new();
        {
            let mut s = self.state.writing();
            let before: HashSet<Key> = keys_locked(&s);
            *s = State::default();
            for image in images {
                add_image_locked(&mut s, image, &mut Vec::new());
            }
            for desc in loose {
                s.blobs.entry(desc.digest).or_insert(Blob {
                    size: desc.size,
                    media_type: desc.media_type,
                    refs: 0,
                });
            }
            let after = keys_locked(&s);
            changes.extend(before.difference(&after).cloned().map(IndexChange::Removed));
            changes.extend(after.difference(&before).cloned().map(IndexChange::Added));
        }
        self.emit(changes);
    }

    fn emit(&self, changes: Vec<IndexChange>) {
        for c in changes {
            // No receiver is fine: nobody is advertising (e.g. in tests).
            let _ = self.changes.send(c);
        }
    }
}

fn keys_locked(s: &State) -> HashSet<Key> {
    s.blobs
        .keys()
        .map(|d| Key::Digest(*d))
        .chain(s.tags.keys().map(|t| Key::Tag(t.clone())))
        .collect()
}

fn add_image_locked(s: &mut State, image: WalkedImage, changes: &mut Vec<IndexChange>) {
    let mut digests = Vec::with_capacity(image.blobs.len());
    for d in image.blobs {
        digests.push(d.digest);
        let entry = s.blobs.entry(d.digest).or_insert_with(|| {
            changes.push(IndexChange::Added(Key::Digest(d.digest)));
            Blob {
                size: d.size,
                media_type: d.media_type.clone(),
                refs: 0,
            }
        });
        // Added loose (content event: no media type known), now named by an image.
        if entry.media_type.is_empty() {
            entry.media_type = d.media_type;
        }
        entry.refs += 1;
    }
    // A tag only counts if its target is present: a tag we cannot serve must not be advertised.
    let tag = image.tag.filter(|_| s.blobs.contains_key(&image.target));
    if let Some(t) = &tag
        && s.tags.insert(t.clone(), image.target).is_none()
    {
        changes.push(IndexChange::Added(Key::Tag(t.clone())));
    }
    s.images.insert(image.name, ImageEntry { tag, digests });
}

fn remove_image_locked(s: &mut State, name: &str, changes: &mut Vec<IndexChange>) {
    let Some(old) = s.images.remove(name) else {
        return;
    };
    if let Some(t) = old.tag
        && s.tags.remove(&t).is_some()
    {
        changes.push(IndexChange::Removed(Key::Tag(t)));
    }
    for d in old.digests {
        if let Some(b) = s.blobs.get_mut(&d) {
            b.refs = b.refs.saturating_sub(1);
            if b.refs == 0 {
                s.blobs.remove(&d);
                changes.push(IndexChange::Removed(Key::Digest(d)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(n: u8) -> Descriptor {
        Descriptor {
            digest: Digest::from_bytes([n; 32]),
            size: n as u64,
            media_type: "x".into(),
        }
    }

    fn image(name: &str, blobs: &[u8]) -> WalkedImage {
        WalkedImage {
            name: name.into(),
            tag: TagKey::from_image_name(name),
            target: desc(blobs[0]).digest,
            blobs: blobs.iter().map(|n| desc(*n)).collect(),
        }
    }

    #[test]
    fn shared_blobs_are_refcounted() {
        let idx = Index::new();
        let mut rx = idx.subscribe();
        idx.set_image(image("r.io/a:1", &[1, 2, 3]));
        idx.set_image(image("r.io/b:1", &[4, 2]));
        assert_eq!(idx.blob_count(), 4);
        assert_eq!(
            idx.resolve(&"r.io/a:1".parse().unwrap()),
            Some(desc(1).digest)
        );
        idx.remove_image("r.io/a:1");
        assert!(idx.stat(&desc(1).digest).is_none());
        assert!(idx.stat(&desc(2).digest).is_some(), "still used by b");
        assert!(idx.resolve(&"r.io/a:1".parse().unwrap()).is_none());
        let mut added = 0;
        let mut removed = 0;
        while let Ok(c) = rx.try_recv() {
            match c {
                IndexChange::Added(_) => added += 1,
                IndexChange::Removed(_) => removed += 1,
            }
        }
        // 4 digests + 2 tags added; digests 1 and 3 and tag a removed.
        assert_eq!((added, removed), (6, 3));
    }

    #[test]
    fn replace_all_emits_only_differences() {
        let idx = Index::new();
        idx.set_image(image("r.io/a:1", &[1, 2]));
        let mut rx = idx.subscribe();
        idx.replace_all(vec![image("r.io/a:1", &[1, 5])], vec![]);
        let mut got: Vec<IndexChange> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        got.sort_by_key(|c| format!("{c:?}"));
        assert_eq!(
            got,
            vec![
                IndexChange::Added(Key::Digest(desc(5).digest)),
                IndexChange::Removed(Key::Digest(desc(2).digest)),
            ]
        );
    }

    #[test]
    fn content_delete_removes_blob_and_tag_needs_target() {
        let idx = Index::new();
        idx.set_image(image("r.io/a:1", &[1, 2]));
        idx.remove_content(&desc(2).digest);
        assert!(idx.stat(&desc(2).digest).is_none());
        // An image whose target is absent keeps no tag.
        let mut orphan = image("r.io/c:1", &[7]);
        orphan.target = desc(9).digest;
        idx.set_image(orphan);
        assert!(idx.resolve(&"r.io/c:1".parse().unwrap()).is_none());
    }
}
