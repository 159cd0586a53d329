//! Durable, atomic file writes with the mode set at creation: hosts.toml, keys,
//! certificates and the p2p identity key.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

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
}
