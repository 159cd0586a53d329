//! The CA directory on disk: atomic, mode-setting file writes and the small JSON state file
//! (CRL number, issued and revoked serials).

use std::collections::BTreeMap;
use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::fs::DirBuilderExt as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{CertsError, Reason};
use crate::fsutil::{self, Existing};

/// Mode of private keys: readable by the owner only.
pub(crate) const KEY_MODE: u32 = 0o600;
/// Mode of certificates, CRLs and the state file: public data.
pub(crate) const PUBLIC_MODE: u32 = 0o644;
/// Mode of a directory created by `init-ca`: it holds `ca.key`.
const DIR_MODE: u32 = 0o700;

/// File names inside the CA directory.
pub const CA_CERT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";
pub const CRL_FILE: &str = "crl.pem";
pub const STATE_FILE: &str = "state.json";

/// Everything the CA remembers between runs. One file, rewritten atomically, so the CRL number
/// and the revocation list can never disagree after a crash.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// The number of the last CRL written; the next one gets this + 1 (RFC 5280: increasing).
    #[serde(default)]
    pub crl_number: u64,
    /// Serial (lowercase hex) → what was issued under it, so `revoke --serial` can name it.
    #[serde(default)]
    pub issued: BTreeMap<String, IssuedRecord>,
    /// Serial (lowercase hex) → when and why it was revoked; every CRL lists all of these.
    #[serde(default)]
    pub revoked: BTreeMap<String, RevokedRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedRecord {
    pub name: String,
    /// RFC 3339, UTC.
    pub issued_at: String,
    /// RFC 3339, UTC.
    pub not_after: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokedRecord {
    /// RFC 3339, UTC; becomes the CRL entry's revocationDate.
    pub revoked_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    /// The certificate's name when known (revoked by `--name`, or found in `issued`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// Reads `state.json`; a missing file is an empty state (a fresh CA).
pub(crate) fn load_state(dir: &Path) -> Result<State, CertsError> {
    let path = dir.join(STATE_FILE);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(State::default()),
        Err(source) => return Err(CertsError::io("read", &path, source)),
    };
    serde_json::from_slice(&bytes).map_err(|e| CertsError::CorruptState {
        path,
        detail: e.to_string(),
    })
}

pub(crate) fn save_state(dir: &Path, state: &State) -> Result<(), CertsError> {
    let path = dir.join(STATE_FILE);
    let mut json = serde_json::to_vec_pretty(state).map_err(|e| CertsError::CorruptState {
        path: path.clone(),
        detail: e.to_string(),
    })?;
    json.push(b'\n');
    write_file(&path, &json, PUBLIC_MODE, true)
}

/// Creates the CA directory (and parents) with mode 0700 if it does not exist.
pub(crate) fn create_dir(dir: &Path) -> Result<(), CertsError> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(|source| CertsError::io("create directory", dir, source))
}

/// Fails with "use --force" when `path` exists and `force` is off. Called for every output of a
/// command before anything is written, so a refused command leaves the directory untouched.
pub(crate) fn ensure_absent(path: &Path, force: bool) -> Result<(), CertsError> {
    if force {
        return Ok(());
    }
    match fs::symlink_metadata(path) {
        Ok(_) => Err(CertsError::Exists {
            path: path.to_path_buf(),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(CertsError::io("check", path, source)),
    }
}

/// Writes `contents` to `path` atomically with `mode` set at creation (see
/// [`fsutil::write_atomic`]). With `overwrite` off, fails with "use --force" if `path` exists,
/// even if it appeared meanwhile.
pub(crate) fn write_file(
    path: &Path,
    contents: &[u8],
    mode: u32,
    overwrite: bool,
) -> Result<(), CertsError> {
    let existing = if overwrite {
        Existing::Replace
    } else {
        Existing::Keep
    };
    fsutil::write_atomic(path, contents, mode, existing).map_err(|source| {
        if source.kind() == io::ErrorKind::AlreadyExists {
            CertsError::Exists {
                path: path.to_path_buf(),
            }
        } else {
            CertsError::io("write", path, source)
        }
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn write_file_sets_mode_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k.key");
        write_file(&key, b"secret", KEY_MODE, false).unwrap();
        assert_eq!(mode(&key), 0o600);
        let err = write_file(&key, b"other", KEY_MODE, false).unwrap_err();
        assert!(err.to_string().contains("use --force"), "{err}");
        assert_eq!(fs::read(&key).unwrap(), b"secret");
        write_file(&key, b"other", KEY_MODE, true).unwrap();
        assert_eq!(fs::read(&key).unwrap(), b"other");
        assert_eq!(mode(&key), 0o600);
        // No temp files left behind.
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn state_round_trips_and_missing_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load_state(dir.path()).unwrap(), State::default());
        let mut state = State {
            crl_number: 7,
            ..State::default()
        };
        state.revoked.insert(
            "0a".into(),
            RevokedRecord {
                revoked_at: "2025-01-01T00:00:00Z".into(),
                reason: Some(Reason::KeyCompromise),
                name: None,
            },
        );
        save_state(dir.path(), &state).unwrap();
        let text = fs::read_to_string(dir.path().join(STATE_FILE)).unwrap();
        assert!(text.contains("\"keyCompromise\""), "{text}");
        assert_eq!(load_state(dir.path()).unwrap(), state);

        fs::write(dir.path().join(STATE_FILE), b"{not json").unwrap();
        let err = load_state(dir.path()).unwrap_err();
        assert!(matches!(err, CertsError::CorruptState { .. }), "{err}");
    }
}
