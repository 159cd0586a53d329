//! The files in each registry directory: reading what is there, saving the original before
//! first replacing it, writing ours, and putting the original back (`--restore`).
//!
//! Every write goes through [`fsutil::write_atomic`]: containerd re-reads hosts.toml on every
//! pull and must see the old file or the new one, never half.

use std::fs::{self, Permissions};
use std::io;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use super::{Action, BACKUP_FILE, ConfigureError, Entry, HOSTS_FILE, MARKER, NONE_FILE, Report};
use crate::fsutil::{self, Existing};

/// A file's bytes and permission bits.
pub(super) type Current = (Vec<u8>, u32);

/// Whether a hosts.toml is one peermirror wrote.
pub(super) fn is_ours(bytes: &[u8]) -> bool {
    bytes.starts_with(MARKER.as_bytes())
}

/// The original hosts.toml (for --keep-existing-mirrors): the current file if foreign, else the
/// backup, so merging with our own last output never keeps a mirror that was since dropped.
pub(super) fn original_text(
    dir: &Path,
    current: Option<&Current>,
) -> Result<Option<(PathBuf, String)>, ConfigureError> {
    let (path, bytes) = match current {
        Some((bytes, _)) if !is_ours(bytes) => (dir.join(HOSTS_FILE), bytes.clone()),
        _ => {
            let backup = dir.join(BACKUP_FILE);
            match read_optional(&backup)? {
                Some((bytes, _)) => (backup, bytes),
                None => return Ok(None),
            }
        }
    };
    match String::from_utf8(bytes) {
        Ok(text) => Ok(Some((path, text))),
        Err(_) => Err(ConfigureError::ExistingInvalid {
            path,
            line: 1,
            message: "not UTF-8".into(),
        }),
    }
}

/// Saves the original (if needed) and installs `text` as `dir/hosts.toml` with `mode`.
pub(super) fn install(
    dir: &Path,
    current: Option<Current>,
    text: &str,
    mode: u32,
) -> Result<Action, ConfigureError> {
    fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
    let action = save_original(dir, current)?;
    write_file(&dir.join(HOSTS_FILE), text.as_bytes(), mode)?;
    Ok(action)
}

/// Records what was there before we first write: a backup of a foreign file, or the "none" marker.
/// Our own output is never backed up, so repeated runs keep the first original.
fn save_original(dir: &Path, current: Option<Current>) -> Result<Action, ConfigureError> {
    let none = dir.join(NONE_FILE);
    match current {
        Some((bytes, mode)) if !is_ours(&bytes) => {
            // A foreign file here is the latest original, even if an older backup exists.
            write_file(&dir.join(BACKUP_FILE), &bytes, mode)?;
            remove_optional(&none)?;
            Ok(Action::WroteAfterBackup)
        }
        _ => {
            if !dir.join(BACKUP_FILE).exists() && !none.exists() {
                write_file(&none, b"", 0o644)?;
            }
            Ok(Action::Wrote)
        }
    }
}

/// Puts back the originals in `dirs` (every directory with a backup or "none" marker under
/// `config_path`, when empty).
pub(super) fn restore(
    config_path: &Path,
    mut dirs: Vec<PathBuf>,
) -> Result<Report, ConfigureError> {
    if dirs.is_empty() {
        let entries = match fs::read_dir(config_path) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Report::default()),
            Err(e) => return Err(io_err("listing", config_path)(e)),
        };
        for entry in entries {
            let dir = entry.map_err(io_err("listing", config_path))?.path();
            if dir.join(BACKUP_FILE).is_file() || dir.join(NONE_FILE).is_file() {
                dirs.push(dir);
            }
        }
        dirs.sort();
    }
    let mut report = Report::default();
    for dir in dirs {
        let hosts = dir.join(HOSTS_FILE);
        let (backup, none) = (dir.join(BACKUP_FILE), dir.join(NONE_FILE));
        let has_backup = backup.is_file();
        if !has_backup && !none.is_file() {
            continue;
        }
        let current = read_optional(&hosts)?;
        let ours_or_absent = current.as_ref().is_none_or(|(bytes, _)| is_ours(bytes));
        let action = match (has_backup, ours_or_absent) {
            (_, false) => Action::LeftForeign,
            (true, true) => {
                put_back(&backup, &hosts)?;
                Action::Restored
            }
            (false, true) => {
                remove_optional(&hosts)?;
                Action::Removed
            }
        };
        if action != Action::LeftForeign || !has_backup {
            remove_optional(&none)?;
        }
        if action == Action::Removed {
            // Most likely we created the directory too; an empty one means the same to containerd.
            let _ = fs::remove_dir(&dir);
        }
        if current.is_some() || action == Action::Restored {
            report.entries.push(Entry {
                path: hosts,
                action,
            });
        }
    }
    Ok(report)
}

/// Copies the backup over hosts.toml (atomically, with the backup's mode), then drops the
/// backup. A crash in between leaves the original in place and a spare copy of it.
fn put_back(backup: &Path, hosts: &Path) -> Result<(), ConfigureError> {
    let (bytes, mode) = match read_optional(backup)? {
        Some(found) => found,
        None => {
            let gone = io::Error::from(io::ErrorKind::NotFound);
            return Err(io_err("restoring", backup)(gone));
        }
    };
    write_file(hosts, &bytes, mode)?;
    remove_optional(backup)
}

/// The file's bytes and permission bits, or `None` if it does not exist.
pub(super) fn read_optional(path: &Path) -> Result<Option<Current>, ConfigureError> {
    match fs::read(path) {
        Ok(bytes) => {
            let meta = fs::metadata(path).map_err(io_err("reading", path))?;
            Ok(Some((bytes, meta.permissions().mode() & 0o7777)))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("reading", path)(e)),
    }
}

fn remove_optional(path: &Path) -> Result<(), ConfigureError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("removing", path)(e)),
        _ => Ok(()),
    }
}

/// Replaces `path` atomically with `bytes`, then sets `mode` exactly: the file is created with
/// it, but the umask may narrow it, and a backup keeps the original's mode to the bit.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), ConfigureError> {
    fsutil::write_atomic(path, bytes, mode, Existing::Replace).map_err(io_err("writing", path))?;
    fs::set_permissions(path, Permissions::from_mode(mode))
        .map_err(io_err("setting the mode of", path))
}

pub(super) fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> ConfigureError + 'a {
    move |source| ConfigureError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}
